// Browser sealing for the applicant pages: when JavaScript runs, the contact
// form and the return form are sealed here and sent to /api/v1 (the server
// only ever receives envelopes); without JavaScript the same forms post to the
// server, which seals for the applicant. Texts come from the page (translated
// on the server); nothing is stored in the browser.
import * as P from "./protocol.js";
import wordlistText from "../../../../crypto/wordlists/eff_large.txt";

const WORDS = wordlistText.split(/\s+/).filter(Boolean);
const $ = (id) => document.getElementById(id);

function show(id, on = true) {
  const el = $(id);
  if (el) el.hidden = !on;
}

async function api(path, { method = "POST", headers = {}, body } = {}) {
  const response = await fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (!response.ok) {
    const error = new Error((answer && answer.error && answer.error.code) || `http_${response.status}`);
    error.status = response.status;
    throw error;
  }
  return answer;
}

async function trustedDirectory() {
  // The directory as this server publishes it. The page and this script come
  // from the same server, so checking its signatures here would add nothing
  // that a server able to change the directory could not also remove from the
  // script; the command-line client is the path that verifies it (docs/server.md).
  const answer = await api("/api/v1/directory", { method: "GET" });
  return answer.directory.directory;
}

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

async function proofOfWork(progress) {
  const answer = await api("/api/v1/pow");
  const bytes = P.b64d(answer.challenge);
  const started = performance.now();
  for (let counter = 0; ; counter++) {
    const digest = P.powDigest(bytes, counter);
    let zero = true;
    for (let bits = answer.difficulty, i = 0; bits > 0; i++, bits -= 8) {
      const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
      if (digest[i] & mask) zero = false;
    }
    if (zero) {
      document.documentElement.dataset.powMs = String(Math.round(performance.now() - started));
      document.documentElement.dataset.powAttempts = String(counter + 1);
      return `${answer.challenge}.${counter}`;
    }
    if (counter % 8 === 7) {
      progress(counter + 1);
      await nextTask(); // keep the page responsive
    }
  }
}

function deriveTimed(codename) {
  const started = performance.now();
  const keys = P.codenameKeys(codename);
  document.documentElement.dataset.codenameMs = String(Math.round(performance.now() - started));
  return keys;
}

const octet = { "Content-Type": "application/octet-stream" };

async function sendContact(form) {
  const data = new FormData(form);
  const pool = String(data.get("pool"));
  const fields = {};
  for (const name of ["role", "access", "offer", "urgency", "languages", "contact_window"]) {
    const value = String(data.get(name) || "");
    if (value.trim()) fields[name] = value;
  }
  const files = data.getAll("attachment").filter((f) => f instanceof File && (f.name || f.size));
  const directory = await trustedDirectory();
  const now = Math.floor(Date.now() / 1000);
  const recipients = P.recipients(directory, pool, now).map((r) => r.key);
  const codename = P.generateCodename(WORDS);
  await nextTask();
  const keys = deriveTimed(codename);
  const attachments = files.map((f) => ({ name: f.name, mediaType: f.type || "application/octet-stream", size: f.size }));
  const payload = P.contactPayload({
    pool,
    language: String(data.get("language")),
    message: String(data.get("message") || ""),
    fields,
    attachments,
    keys,
  });
  const sealed = P.seal(payload, recipients, P.Purpose.CONTACT);
  payload.fill(0);
  const signature = P.submissionSignature(keys.mailboxSeed, {
    kind: "contact",
    pool,
    attachments: files.length,
    envelopeHash: sealed.hash,
    contactId: "",
  });
  const pow = await proofOfWork((n) => ($("js-progress").textContent = String(n)));
  const query = `pool=${encodeURIComponent(pool)}&attachments=${files.length}`;
  let answer = await api(`/api/v1/contacts?${query}`, {
    headers: {
      ...octet,
      "Safe-Passage-PoW": pow,
      "Safe-Passage-Mailbox-Key": P.b64e(keys.mailboxPublic),
      "Safe-Passage-Signature": P.b64e(signature),
    },
    body: sealed.data,
  });
  if (files.length) {
    const upload = { ...octet, "Safe-Passage-Upload": answer.upload_token };
    for (const [n, file] of files.entries()) {
      const count = P.chunkCount(file.size);
      for (let i = 0; i < count; i++) {
        const part = new Uint8Array(await file.slice(i * P.CHUNK_DATA_MAX, (i + 1) * P.CHUNK_DATA_MAX).arrayBuffer());
        const frame = P.sealChunk(sealed, n, i, part, i === count - 1);
        part.fill(0);
        await api(`/api/v1/contacts/${answer.contact}/attachments/${n}/chunks/${i}`, { method: "PUT", headers: upload, body: frame });
      }
    }
    answer = await api(`/api/v1/contacts/${answer.contact}/finalise`, { headers: upload });
  }
  return { codename, day: answer.receipt.day };
}

function enhanceContact() {
  const form = $("contact-form");
  if (!form) return;
  show("notice-server", false);
  show("notice-browser", true);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show("js-failed", false);
    show("js-working", true);
    form.querySelectorAll("button").forEach((b) => (b.disabled = true));
    try {
      const sent = await sendContact(form);
      form.reset();
      show("contact-section", false);
      $("codename").textContent = sent.codename;
      $("js-day").textContent = sent.day;
      show("js-done", true);
    } catch (error) {
      $("js-error-code").textContent = String(error.message || "error");
      show("js-failed", true);
    } finally {
      show("js-working", false);
      form.querySelectorAll("button").forEach((b) => (b.disabled = false));
    }
  });
}

// One page at a time, each with a fresh single-use nonce; the answer also lists the
// mailbox's contacts with their pools, which a follow-up must name (protocol 15.4).
async function readMailbox(keys) {
  const mailbox = P.hex(keys.mailboxId);
  const messages = [];
  let contacts = [];
  let after = 0;
  for (let page = 0; page < 50; page++) {
    const challenge = await api(`/api/v1/mailboxes/${mailbox}/challenge`);
    const nonce = P.b64d(challenge.nonce, 32);
    const body = JSON.stringify({ nonce: challenge.nonce, signature: P.b64e(P.mailboxAuthSignature(keys, nonce)), after });
    const answer = await api(`/api/v1/mailboxes/${mailbox}/fetch`, { headers: { "Content-Type": "application/json" }, body });
    contacts = answer.contacts;
    const fresh = answer.messages.filter((m) => m.seq > after);
    if (!fresh.length) break;
    messages.push(...fresh);
    after = fresh[fresh.length - 1].seq;
  }
  return { messages, contacts };
}

async function readReplies(codename) {
  const keys = deriveTimed(codename);
  const directory = await trustedDirectory();
  const { messages, contacts } = await readMailbox(keys);
  return { replies: messages.map((m) => P.openReply(directory, keys, m)), contacts };
}

// Sealed here to the pool's current intake keys, as the command-line client does: the
// server receives the envelope only.
async function sendFollowUp(codename, chosen, message) {
  if (!message.trim()) throw new Error("empty_message");
  const keys = deriveTimed(codename);
  const directory = await trustedDirectory();
  const { contacts } = await readMailbox(keys);
  const contact = contacts.find((c) => c.id === chosen) || contacts[contacts.length - 1];
  if (!contact) throw new Error("not_found");
  const now = Math.floor(Date.now() / 1000);
  const recipients = P.recipients(directory, contact.pool, now).map((r) => r.key);
  const payload = P.followUpPayload({ contactId: contact.id, message, keys });
  const sealed = P.seal(payload, recipients, P.Purpose.FOLLOW_UP);
  payload.fill(0);
  const signature = P.submissionSignature(keys.mailboxSeed, {
    kind: "follow-up",
    pool: contact.pool,
    attachments: 0,
    envelopeHash: sealed.hash,
    contactId: contact.id,
  });
  const pow = await proofOfWork((n) => ($("js-progress").textContent = String(n)));
  const mailbox = P.hex(keys.mailboxId);
  return api(`/api/v1/mailboxes/${mailbox}/follow-ups?contact=${encodeURIComponent(contact.id)}`, {
    headers: { ...octet, "Safe-Passage-PoW": pow, "Safe-Passage-Signature": P.b64e(signature) },
    body: sealed.data,
  });
}

function showReplies(replies) {
  const list = $("js-replies");
  list.replaceChildren();
  for (const reply of replies) {
    const item = document.createElement("li");
    item.className = "reply";
    const meta = document.createElement("p");
    meta.className = reply.verified ? "meta" : "meta warning";
    meta.textContent = `${reply.day}: ${reply.verified ? reply.handlerName : $("js-unverified").textContent}`;
    item.append(meta);
    if (reply.verified) {
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = reply.text;
      item.append(text);
    }
    list.append(item);
  }
  show("js-no-replies", replies.length === 0);
  show("js-replies-section", true);
}

// With more than one contact, the applicant picks which one a follow-up continues
// (numbered oldest first, as the page without JavaScript does).
function showContactChoice(contacts) {
  const select = $("js-contact");
  select.replaceChildren();
  contacts.forEach((c, i) => select.append(new Option(String(i + 1), c.id, false, i === contacts.length - 1)));
  show("js-contact-choice", contacts.length > 1);
}

function enhanceReturn() {
  const form = $("return-form");
  if (!form) return;
  show("notice-return-browser", true);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const following = event.submitter && event.submitter.value === "follow-up";
    show("js-failed", false);
    show("js-follow-up-sent", false);
    show("js-working", true);
    form.querySelectorAll("button").forEach((b) => (b.disabled = true));
    const data = new FormData(form);
    const codename = String(data.get("codename") || "");
    try {
      if (following) {
        const chosen = $("js-contact-choice").hidden ? "" : $("js-contact").value;
        await sendFollowUp(codename, chosen, String(data.get("message") || ""));
        $("message").value = "";
        show("js-follow-up-sent", true);
      } else {
        const { replies, contacts } = await readReplies(codename);
        showReplies(replies);
        showContactChoice(contacts);
      }
    } catch (error) {
      $("js-error-code").textContent = String(error.message || "error");
      show("js-failed", true);
    } finally {
      show("js-working", false);
      form.querySelectorAll("button").forEach((b) => (b.disabled = false));
    }
  });
}

if (typeof document !== "undefined") {
  document.documentElement.dataset.sealing = "browser";
  enhanceContact();
  enhanceReturn();
}
