// The Safe Passage protocol for the browser (docs/protocol.md): envelope v1 and
// chunks (sections 4-5), codename keys (9), proof of work (12), intake payloads
// and signatures (15), reply verification (16.1). Every label mirrors
// crypto/labels.py; tests/test_web_js.py runs this module under node against
// tests/vectors and against the Python implementation in both directions.
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { sha3_256 } from "@noble/hashes/sha3.js";
import { hmac } from "@noble/hashes/hmac.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { argon2id } from "@noble/hashes/argon2.js";
import { randomBytes } from "@noble/hashes/utils.js";

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });
const b = (s) => enc.encode(s);

export const L = {
  ENVELOPE_MAGIC: new Uint8Array([0x53, 0x50, 0x45, 0x01]),
  CHUNK_MAGIC: new Uint8Array([0x53, 0x50, 0x43, 0x01]),
  KEY_ID: b("safepassage/v1/key-id"),
  KEY_TYPE_ED25519: b("ed25519"),
  KEY_TYPE_HYBRID: b("x25519-mlkem768"),
  HYBRID_COMBINER: b("safepassage/v1/hybrid-kem"),
  WRAP_AD: b("safepassage/v1/wrap"),
  COMMIT_KEY: b("safepassage/v1/commit-key"),
  BODY_KEY: b("safepassage/v1/body-key"),
  CHUNK_KEY: b("safepassage/v1/chunk-key"),
  CHUNK_AD: b("safepassage/v1/chunk"),
  SIGNATURE: b("safepassage/v1/sig/"),
  SIG_CONTACT: b("contact"),
  SIG_FOLLOW_UP: b("follow-up"),
  SIG_SUBMISSION: b("submission"),
  SIG_MAILBOX_AUTH: b("mailbox-auth"),
  SIG_REPLY: b("reply"),
  CODENAME_SALT: b("safepassage/v1/codename-salt"),
  CODENAME_REPLY_X25519: b("safepassage/v1/codename/reply-x25519"),
  CODENAME_REPLY_MLKEM: b("safepassage/v1/codename/reply-mlkem768"),
  CODENAME_MAILBOX: b("safepassage/v1/codename/mailbox-ed25519"),
  POW_INPUT: b("safepassage/v1/pow"),
  POW_SALT: b("safepassage/v1/pow-salt"),
};

export const Purpose = { CONTACT: 1, REPLY: 2, FOLLOW_UP: 3 };
const KiB = 1024;
export const BUCKETS = [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1024 * KiB];
export const MAX_BODY = BUCKETS[BUCKETS.length - 1] - 4;
const ENVELOPE_ID_LEN = 16;
const KEY_ID_LEN = 32;
const HEADER_PREFIX_LEN = 4 + 3 + ENVELOPE_ID_LEN;
const MLKEM_CT_LEN = 1088;
const WRAPPED_KEY_LEN = 48;
const STANZA_LEN = KEY_ID_LEN + 32 + MLKEM_CT_LEN + WRAPPED_KEY_LEN;
const COMMITMENT_LEN = 32;
const NONCE_LEN = 24;
const ZERO_NONCE = new Uint8Array(NONCE_LEN);
export const CHUNK_PLAINTEXT = 1024 * 1024;
export const CHUNK_DATA_MAX = CHUNK_PLAINTEXT - 4;
const CHUNK_HEADER_LEN = 4 + 2 + 4 + 1;
export const CODENAME_OPSLIMIT = 3;
export const CODENAME_MEMLIMIT_KIB = 64 * 1024;
export const CODENAME_WORDS = 7;

export class ProtocolError extends Error {}

// --- bytes ------------------------------------------------------------------------------------

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const u8 = (n) => new Uint8Array([n]);
const u16 = (n) => new Uint8Array([(n >>> 8) & 255, n & 255]);
const u32 = (n) => new Uint8Array([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
function u64(n) {
  const out = new Uint8Array(8);
  let v = BigInt(n);
  for (let i = 7; i >= 0; i--) {
    out[i] = Number(v & 255n);
    v >>= 8n;
  }
  return out;
}
const readU32 = (a, at) => ((a[at] << 24) | (a[at + 1] << 16) | (a[at + 2] << 8) | a[at + 3]) >>> 0;

function equal(a, b2) {
  if (a.length !== b2.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b2[i];
  return d === 0;
}

export function hex(a) {
  return Array.from(a, (x) => x.toString(16).padStart(2, "0")).join("");
}

export function b64e(a) {
  let s = "";
  for (let i = 0; i < a.length; i += 0x8000) s += String.fromCharCode(...a.subarray(i, i + 0x8000));
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function b64d(text, length) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text)) throw new ProtocolError("bad base64");
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4));
  const out = Uint8Array.from(s, (c) => c.charCodeAt(0));
  if (b64e(out) !== text || (length !== undefined && out.length !== length)) throw new ProtocolError("bad base64");
  return out;
}

// Canonical JSON (section 1.3): sorted keys, no whitespace, UTF-8, integers only.
// JSON.stringify escapes strings exactly as Python's json.dumps(ensure_ascii=False)
// does for well-formed text; keys here are ASCII, so code-unit order is code-point order.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function canonicalJson(value) {
  const walk = (v) => {
    if (Array.isArray(v)) return "[" + v.map(walk).join(",") + "]";
    if (v !== null && typeof v === "object") {
      return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + walk(v[k])).join(",") + "}";
    }
    if (typeof v === "number" && !Number.isSafeInteger(v)) throw new ProtocolError("JSON numbers must be safe integers");
    if (typeof v === "string" && LONE_SURROGATE.test(v)) throw new ProtocolError("JSON strings must be well-formed");
    return JSON.stringify(v);
  };
  return b(walk(value));
}

// --- keys -------------------------------------------------------------------------------------

export const keyId = (type, pub) => sha256(concat(L.KEY_ID, u8(0), type, u8(0), pub));
export const hybridKeyId = (pub) => keyId(L.KEY_TYPE_HYBRID, pub);
export const mailboxId = (pub) => keyId(L.KEY_TYPE_ED25519, pub);

const sigMessage = (purpose, message) => concat(L.SIGNATURE, purpose, u8(0), message);
export const sign = (seed, purpose, message) => ed25519.sign(sigMessage(purpose, message), seed);
export const verify = (pub, purpose, message, sig) => ed25519.verify(sig, sigMessage(purpose, message), pub);

// A hybrid private key: x25519 secret (32) || ML-KEM-768 seed (64), as crypto/keys.py.
export function hybridFromPrivate(raw) {
  const xs = raw.slice(0, 32);
  const { publicKey, secretKey } = ml_kem768.keygen(raw.slice(32, 96));
  const pub = concat(x25519.getPublicKey(xs), publicKey);
  return { x25519: xs, mlkemSecret: secretKey, public: pub, id: hybridKeyId(pub) };
}

export function codenameKeys(codename) {
  const words = codename.normalize("NFKC").toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length !== CODENAME_WORDS || !words.every((w) => /^[a-z-]+$/.test(w))) {
    throw new ProtocolError("not a codename");
  }
  const master = argon2id(b(words.join(" ")), sha256(L.CODENAME_SALT).slice(0, 16), {
    t: CODENAME_OPSLIMIT,
    m: CODENAME_MEMLIMIT_KIB,
    p: 1,
    dkLen: 32,
  });
  const sub = (label, n) => hkdf(sha256, master, new Uint8Array(0), label, n);
  const reply = hybridFromPrivate(concat(sub(L.CODENAME_REPLY_X25519, 32), sub(L.CODENAME_REPLY_MLKEM, 64)));
  const mailboxSeed = sub(L.CODENAME_MAILBOX, 32);
  const mailboxPublic = ed25519.getPublicKey(mailboxSeed);
  master.fill(0);
  return { reply, mailboxSeed, mailboxPublic, mailboxId: mailboxId(mailboxPublic) };
}

export function generateCodename(wordlist) {
  // Uniform choice by rejection sampling: 7776 words, 16-bit draws.
  const out = [];
  const limit = 65536 - (65536 % wordlist.length);
  while (out.length < CODENAME_WORDS) {
    const r = randomBytes(2);
    const n = (r[0] << 8) | r[1];
    if (n < limit) out.push(wordlist[n % wordlist.length]);
  }
  return out.join(" ");
}

// --- envelope (section 4) -----------------------------------------------------------------------

export function bucketFor(length) {
  const i = BUCKETS.findIndex((size) => length + 4 <= size);
  if (i < 0) throw new ProtocolError("message too long");
  return i;
}

const derive = (contentKey, envelopeId, label) => hkdf(sha256, contentKey, envelopeId, label, 32);
const combine = (ssM, ssX, ctM, ctX, pkX, kid) => sha3_256(concat(L.HYBRID_COMBINER, ssM, ssX, ctM, ctX, pkX, kid));
const pad = (data, size) => concat(u32(data.length), data, new Uint8Array(size - 4 - data.length));

function unpad(padded) {
  const n = readU32(padded, 0);
  if (n > padded.length - 4 || padded.subarray(4 + n).some((x) => x !== 0)) throw new ProtocolError("bad padding");
  return padded.slice(4, 4 + n);
}

// recipients: hybrid public keys (1216 bytes each).
export function seal(plaintext, recipients, purpose) {
  const ordered = recipients.map((pub) => ({ pub, id: hybridKeyId(pub) }));
  ordered.sort((a, c) => (hex(a.id) < hex(c.id) ? -1 : hex(a.id) > hex(c.id) ? 1 : 0));
  if (ordered.length < 1 || ordered.length > 64) throw new ProtocolError("1 to 64 recipients");
  const bucket = bucketFor(plaintext.length);
  const envelopeId = randomBytes(ENVELOPE_ID_LEN);
  const contentKey = randomBytes(32);
  const prefix = concat(L.ENVELOPE_MAGIC, u8(purpose), u8(bucket), u8(ordered.length), envelopeId);
  const stanzas = [prefix];
  for (const { pub, id } of ordered) {
    const pkX = pub.slice(0, 32);
    const ephSecret = randomBytes(32);
    const ephPublic = x25519.getPublicKey(ephSecret);
    const ssX = x25519.getSharedSecret(ephSecret, pkX);
    const { cipherText: ctM, sharedSecret: ssM } = ml_kem768.encapsulate(pub.slice(32));
    const wrapKey = combine(ssM, ssX, ctM, ephPublic, pkX, id);
    // Fixed nonce: each wrap key is fresh and used once.
    const wrapped = xchacha20poly1305(wrapKey, ZERO_NONCE, concat(L.WRAP_AD, prefix, id)).encrypt(contentKey);
    stanzas.push(id, ephPublic, ctM, wrapped);
  }
  let header = concat(...stanzas);
  header = concat(header, hmac(sha256, derive(contentKey, envelopeId, L.COMMIT_KEY), header));
  const bodyKey = derive(contentKey, envelopeId, L.BODY_KEY);
  const body = xchacha20poly1305(bodyKey, ZERO_NONCE, header).encrypt(pad(plaintext, BUCKETS[bucket]));
  const data = concat(header, body);
  return { data, bucket, envelopeId, contentKey, hash: sha256(data) };
}

// keys: hybrid private keys; the first stanza naming one of them is opened (as crypto/envelope.py).
export function openEnvelope(data, keys, expectedPurpose) {
  if (data.length < HEADER_PREFIX_LEN || !equal(data.subarray(0, 4), L.ENVELOPE_MAGIC)) {
    throw new ProtocolError("not an envelope");
  }
  const [purpose, bucket, count] = [data[4], data[5], data[6]];
  if (purpose !== expectedPurpose) throw new ProtocolError("wrong purpose");
  if (bucket >= BUCKETS.length || count < 1 || count > 64) throw new ProtocolError("bad header");
  const headerLen = HEADER_PREFIX_LEN + STANZA_LEN * count + COMMITMENT_LEN;
  if (data.length !== headerLen + BUCKETS[bucket] + 16) throw new ProtocolError("bad length");
  const envelopeId = data.slice(7, HEADER_PREFIX_LEN);
  const prefix = data.slice(0, HEADER_PREFIX_LEN);
  let previous = "";
  let found = -1;
  let key = null;
  for (let i = 0; i < count; i++) {
    const at = HEADER_PREFIX_LEN + STANZA_LEN * i;
    const id = hex(data.subarray(at, at + KEY_ID_LEN));
    if (id <= previous) throw new ProtocolError("recipients out of order");
    previous = id;
    const mine = keys.find((k) => hex(k.id) === id);
    if (found < 0 && mine) [found, key] = [at, mine];
  }
  if (found < 0) throw new ProtocolError("not a recipient");
  let at = found + KEY_ID_LEN;
  const eph = data.slice(at, (at += 32));
  const ctM = data.slice(at, (at += MLKEM_CT_LEN));
  const wrapped = data.slice(at, (at += WRAPPED_KEY_LEN));
  const ssX = x25519.getSharedSecret(key.x25519, eph);
  const ssM = ml_kem768.decapsulate(ctM, key.mlkemSecret);
  const wrapKey = combine(ssM, ssX, ctM, eph, key.public.slice(0, 32), key.id);
  const contentKey = xchacha20poly1305(wrapKey, ZERO_NONCE, concat(L.WRAP_AD, prefix, key.id)).decrypt(wrapped);
  const commitment = hmac(sha256, derive(contentKey, envelopeId, L.COMMIT_KEY), data.subarray(0, headerLen - 32));
  if (!equal(commitment, data.subarray(headerLen - 32, headerLen))) throw new ProtocolError("commitment");
  const bodyKey = derive(contentKey, envelopeId, L.BODY_KEY);
  const header = data.slice(0, headerLen);
  const padded = xchacha20poly1305(bodyKey, ZERO_NONCE, header).decrypt(data.slice(headerLen));
  return { plaintext: unpad(padded), contentKey, envelopeId, hash: sha256(data) };
}

// --- attachment chunks (section 5) ---------------------------------------------------------------

export function chunkCount(size) {
  return Math.max(1, Math.ceil(size / CHUNK_DATA_MAX));
}

export function sealChunk(sealed, attachment, index, data, final) {
  if (data.length > CHUNK_DATA_MAX || (!final && data.length !== CHUNK_DATA_MAX)) throw new ProtocolError("chunk size");
  const key = derive(sealed.contentKey, sealed.envelopeId, L.CHUNK_KEY);
  const frameHeader = concat(L.CHUNK_MAGIC, u16(attachment), u32(index), u8(final ? 1 : 0));
  const nonce = concat(u16(attachment), u32(index), new Uint8Array(NONCE_LEN - 6));
  const ad = concat(L.CHUNK_AD, sealed.hash, frameHeader);
  return concat(frameHeader, xchacha20poly1305(key, nonce, ad).encrypt(pad(data, CHUNK_PLAINTEXT)));
}

// --- proof of work (section 12) -----------------------------------------------------------------------

export function powDigest(challengeBytes, counter) {
  const memKib = readU32(challengeBytes, 4 + 16 + 8 + 1);
  const ops = challengeBytes[4 + 16 + 8 + 1 + 4];
  return argon2id(concat(L.POW_INPUT, challengeBytes, u64(counter)), sha256(L.POW_SALT).slice(0, 16), {
    t: ops,
    m: memKib,
    p: 1,
    dkLen: 32,
  });
}

function meets(digest, difficulty) {
  let bits = difficulty;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if (digest[i] & mask) return false;
  }
  return true;
}

// Returns the counter; onAttempt(n) after every attempt (may throw to cancel).
export function solvePow(challengeText, onAttempt) {
  const bytes = b64d(challengeText);
  const difficulty = bytes[4 + 16 + 8];
  if (difficulty > 24 || readU32(bytes, 29) > 64 * 1024 || bytes[33] > 4) throw new ProtocolError("challenge too hard");
  for (let counter = 0; ; counter++) {
    const ok = meets(powDigest(bytes, counter), difficulty);
    if (onAttempt) onAttempt(counter + 1);
    if (ok) return counter;
  }
}

// --- intake payloads (section 15) ---------------------------------------------------------------------

function signedPayload(outer, body, purpose, seed) {
  const payload = canonicalJson({ [outer]: body, sig: b64e(sign(seed, purpose, canonicalJson(body))) });
  if (payload.length > MAX_BODY) throw new ProtocolError("message too long");
  return payload;
}

export function contactPayload({ pool, language, message, fields, attachments, keys }) {
  const body = {
    type: "safepassage/contact/v1",
    pool,
    language,
    message,
    fields,
    attachments: attachments.map((a) => ({ name: a.name, media_type: a.mediaType, size: a.size, chunks: chunkCount(a.size) })),
    reply_key: b64e(keys.reply.public),
    mailbox_key: b64e(keys.mailboxPublic),
    origin: "browser",
  };
  return signedPayload("contact", body, L.SIG_CONTACT, keys.mailboxSeed);
}

export function followUpPayload({ contactId, message, keys }) {
  const body = {
    type: "safepassage/follow-up/v1",
    contact: contactId,
    message,
    attachments: [],
    mailbox_key: b64e(keys.mailboxPublic),
  };
  return signedPayload("follow_up", body, L.SIG_FOLLOW_UP, keys.mailboxSeed);
}

export function submissionSignature(seed, { kind, pool, attachments, envelopeHash, contactId }) {
  const message = canonicalJson({
    type: "safepassage/submission/v1",
    kind,
    pool,
    attachments,
    envelope: b64e(envelopeHash),
    contact: contactId,
  });
  return sign(seed, L.SIG_SUBMISSION, message);
}

export function mailboxAuthSignature(keys, nonce) {
  const message = canonicalJson({ type: "safepassage/mailbox-auth/v1", mailbox: hex(keys.mailboxId), nonce: b64e(nonce) });
  return sign(keys.mailboxSeed, L.SIG_MAILBOX_AUTH, message);
}

// --- directory and replies -----------------------------------------------------------------------------

// The pool's current intake keys: each handler's newest key valid now (crypto/directory.py).
export function recipients(directory, pool, now) {
  if (!directory.pools.some((p) => p.name === pool)) throw new ProtocolError("no such pool");
  const out = [];
  for (const h of directory.handlers) {
    if (!h.pools.includes(pool)) continue;
    const valid = h.intake_keys.filter((k) => k.not_before <= now && now < k.not_after);
    if (!valid.length) continue;
    valid.sort((a, c) => a.not_before - c.not_before || (hex(hybridKeyId(b64d(a.key))) < hex(hybridKeyId(b64d(c.key))) ? -1 : 1));
    out.push({ handler: h.id, key: b64d(valid[valid.length - 1].key, 1216) });
  }
  if (!out.length) throw new ProtocolError("nobody in this pool can receive messages now");
  return out;
}

// A reply counts as from the organisation only when a listed handler signed it for this contact.
export function openReply(directory, keys, message) {
  try {
    const opened = openEnvelope(b64d(message.envelope), [keys.reply], Purpose.REPLY);
    const outer = JSON.parse(dec.decode(opened.plaintext));
    const body = outer.reply;
    if (!equal(canonicalJson(outer), opened.plaintext) || body.type !== "safepassage/reply/v1") throw new ProtocolError("form");
    const handler = directory.handlers.find((h) => h.id === body.handler);
    if (!handler || body.contact !== message.contact) throw new ProtocolError("not ours");
    if (!verify(b64d(handler.identity_key, 32), L.SIG_REPLY, canonicalJson(body), b64d(outer.sig, 64))) {
      throw new ProtocolError("signature");
    }
    return { day: message.day, verified: true, handlerName: handler.name, text: body.message };
  } catch {
    return { day: message.day, verified: false, handlerName: null, text: null };
  }
}
