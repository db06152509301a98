// Turning messages into elements. Everything a person or the model wrote goes in as text nodes
// (textContent, createTextNode), never as HTML: a message `<img src=x onerror=…>` shows those
// characters. Paragraphs (blank lines) and line breaks are kept; no Markdown is interpreted.

/** An element with `attributes` set and `children` appended (strings as text nodes). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Fills `target` with `text` as paragraphs of lines. */
export function renderText(target, text) {
  target.replaceChildren();
  const paragraphs = text.replace(/\r\n?/g, "\n").split(/\n{2,}/);
  for (const paragraph of paragraphs) {
    if (!paragraph.trim() && paragraphs.length > 1) continue;
    const p = document.createElement("p");
    paragraph.split("\n").forEach((line, i) => {
      if (i > 0) p.append(document.createElement("br"));
      p.append(document.createTextNode(line));
    });
    target.append(p);
  }
}

/** Only the digits (and a leading +) of a phone number, for a tel: link. */
function dialable(phone) {
  const digits = phone.replace(/[^\d+]/g, "");
  return digits.replace(/(?!^)\+/g, "");
}

/** An https link from the server's resources, or nothing if it is not one. */
function safeUrl(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/** The crisis lines of a safety reply, as links and tel: numbers. */
export function renderResources(safety) {
  const resources = safety.resources;
  const box = el("aside", { class: `resources ${safety.level}`, "aria-label": "Crisis lines" });
  box.append(el("h3", {}, safety.level === "crisis" ? "You can talk to someone now" : "If you need to talk to someone"));
  const list = el("ul");
  if (resources.emergency) {
    // The fallback names no number ("your local emergency number …"): it stays words.
    const number = /^[\d\s+()-]+$/.test(resources.emergency);
    list.append(el("li", {}, "In immediate danger: ",
      number ? el("a", { href: `tel:${dialable(resources.emergency)}` }, resources.emergency) : resources.emergency));
  }
  for (const line of resources.lines || []) {
    const item = el("li", {}, el("strong", {}, line.name));
    if (line.phone) item.append(" — call ", el("a", { href: `tel:${dialable(line.phone)}` }, line.phone));
    if (line.sms) item.append(" — text ", el("a", { href: `sms:${dialable(line.sms)}` }, line.sms));
    if (line.hours) item.append(` (${line.hours})`);
    const url = safeUrl(line.url);
    if (url) item.append(" — ", el("a", { href: url, rel: "noopener noreferrer", target: "_blank" }, new URL(url).host));
    list.append(item);
  }
  box.append(list);
  const source = safeUrl(resources.source);
  box.append(el("p", { class: "source" }, `${resources.name}; numbers checked ${resources.checked}`, source ? " against " : "",
    source ? el("a", { href: source, rel: "noopener noreferrer", target: "_blank" }, new URL(source).host) : ""));
  return box;
}

const FINISHED = {
  cancelled: "Stopped",
  length: "Cut off at the length limit",
  error: "The reply failed partway",
};

/** What to say under a reply about how it ended, if anything. */
export function finishNote(reason) {
  return FINISHED[reason] || null;
}

/** "3 minutes ago"-style times would need updating; a plain local time does not. */
export function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { day: "numeric", month: "short", year: date.getFullYear() === today.getFullYear() ? undefined : "numeric" });
}
