// A command-line face of src/protocol.js for tests/test_web_js.py: one JSON
// request on stdin, one JSON answer on stdout. Not part of the bundle.
import * as P from "../src/protocol.js";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const req = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const hexd = (h) => Uint8Array.from(Buffer.from(h, "hex"));
const out = {};

switch (req.op) {
  case "open": {
    const keys = req.keys.map((k) => P.hybridFromPrivate(hexd(k)));
    try {
      out.plaintext = P.hex(P.openEnvelope(P.b64d(req.envelope), keys, req.purpose).plaintext);
    } catch (e) {
      out.error = String(e.message || e);
    }
    break;
  }
  case "open_codename": {
    const keys = P.codenameKeys(req.codename);
    out.plaintext = P.hex(P.openEnvelope(P.b64d(req.envelope), [keys.reply], req.purpose).plaintext);
    break;
  }
  case "seal": {
    const sealed = P.seal(hexd(req.plaintext), req.recipients.map((r) => P.b64d(r)), req.purpose);
    out.envelope = P.b64e(sealed.data);
    out.chunks = (req.attachments || []).map((data, n) => {
      const bytes = hexd(data);
      const frames = [];
      const count = P.chunkCount(bytes.length);
      for (let i = 0; i < count; i++) {
        const part = bytes.subarray(i * P.CHUNK_DATA_MAX, (i + 1) * P.CHUNK_DATA_MAX);
        frames.push(P.b64e(P.sealChunk(sealed, n, i, part, i === count - 1)));
      }
      return frames;
    });
    break;
  }
  case "codename": {
    const t = performance.now();
    const keys = P.codenameKeys(req.codename);
    out.ms = performance.now() - t;
    out.mailbox_public = P.b64e(keys.mailboxPublic);
    out.mailbox_id = P.hex(keys.mailboxId);
    out.reply_key_id = P.hex(keys.reply.id);
    break;
  }
  case "pow_digest":
    out.digest = P.hex(P.powDigest(P.b64d(req.challenge), req.counter));
    break;
  case "pow_solve": {
    const t = performance.now();
    out.counter = P.solvePow(req.challenge, null);
    out.ms = performance.now() - t;
    break;
  }
  case "canonical":
    out.json = Buffer.from(P.canonicalJson(req.value)).toString("utf8");
    break;
  case "contact": {
    const keys = P.codenameKeys(req.codename);
    const payload = P.contactPayload({ ...req.contact, keys });
    const sealed = P.seal(payload, req.recipients.map((r) => P.b64d(r)), P.Purpose.CONTACT);
    const sig = P.submissionSignature(keys.mailboxSeed, {
      kind: "contact",
      pool: req.contact.pool,
      attachments: req.contact.attachments.length,
      envelopeHash: sealed.hash,
      contactId: "",
    });
    out.envelope = P.b64e(sealed.data);
    out.signature = P.b64e(sig);
    out.mailbox_key = P.b64e(keys.mailboxPublic);
    break;
  }
  default:
    out.error = "unknown op";
}
process.stdout.write(JSON.stringify(out));
