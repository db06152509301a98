// The API client: the bearer token, JSON calls, errors in words, and streamed turns read as
// server-sent events.
//
// The token lives in this module's memory and in sessionStorage: a reload of the tab keeps the
// person logged in, another tab or a closed browser does not, and nothing is sent by the browser
// on its own (no cookie, so no CSRF). Any script running in the page could read it; the CSP
// (script-src 'self', no inline script, no eval) is what keeps other scripts out.

const TOKEN_KEY = "ifs-guide.token";
let token = sessionStorage.getItem(TOKEN_KEY);
let onUnauthorized = () => {};

export function loggedIn() {
  return Boolean(token);
}

export function setToken(value) {
  token = value;
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** What to do when the server refuses the token (expired, logged out elsewhere, account gone). */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/** An error the API answered (or the network's), with a sentence for people. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.details = details || {};
  }
}

function seconds(n) {
  if (n >= 3600) {
    const hours = Math.round(n / 3600);
    return `${hours} hour${hours === 1 ? "" : "s"}`;
  }
  if (n >= 90) return `${Math.round(n / 60)} minutes`;
  return `${n} second${n === 1 ? "" : "s"}`;
}

/** The sentence shown for an error: never the raw JSON. */
export function describe(error) {
  if (!(error instanceof ApiError)) return "Something went wrong in this page. Reload it to go on.";
  const wait = error.retryAfter ? ` Try again in ${seconds(error.retryAfter)}.` : " Try again in a moment.";
  switch (error.code) {
    case "network":
      return "The server could not be reached. Check your connection and try again.";
    case "quota_exceeded":
      return `You have used today's allowance of replies.${error.retryAfter ? ` It renews in ${seconds(error.retryAfter)}.` : " It renews at midnight UTC."}`;
    case "agent_busy":
      return `The guide is answering other people right now.${wait}`;
    case "invalid_credentials":
      return error.sentToken ? "That password is wrong; nothing was deleted." : "That email and password do not match an account.";
    case "email_taken":
      return "That email already has an account. Log in instead.";
    case "not_last_reply":
      return "That reply is no longer the last one. Reload the dialogue to see what changed.";
    default:
      break;
  }
  switch (error.status) {
    case 400:
    case 409:
    case 413:
    case 422:
      return error.message ? `${sentence(error.message)}` : "The request was not accepted.";
    case 401:
      return "Your session has ended. Log in again.";
    case 404:
      return "That is no longer there. It may have been deleted.";
    case 429:
      return `Too many attempts.${wait}`;
    case 502:
    case 504:
      return `The guide could not answer this time; your message was kept.${wait}`;
    case 503:
      return `The service is unavailable for a moment.${wait}`;
    default:
      return `The server could not do that (error ${error.status}).${wait}`;
  }
}

function sentence(text) {
  const trimmed = text.trim();
  const upper = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(upper) ? upper : `${upper}.`;
}

async function failure(response, sentToken) {
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const detail = body && body.error ? body.error : {};
  const error = new ApiError(response.status, detail.code || "http", detail.message || "", Number.isFinite(retry) ? retry : 0, detail);
  error.sentToken = sentToken;
  // A wrong password (log-in, account deletion) is `invalid_credentials`; any other 401 means the
  // token is no longer good.
  if (response.status === 401 && sentToken && error.code !== "invalid_credentials") {
    setToken(null);
    onUnauthorized(error);
  }
  return error;
}

function headers(extra) {
  const all = { Accept: "application/json", ...extra };
  if (token) all.Authorization = `Bearer ${token}`;
  return all;
}

async function send(method, path, body, accept, signal) {
  const init = { method, headers: headers(accept ? { Accept: accept } : {}), signal };
  const sentToken = Boolean(token);
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    const response = await fetch(path, init);
    response.sentToken = sentToken;
    return response;
  } catch (cause) {
    if (cause && cause.name === "AbortError") throw cause;
    throw new ApiError(0, "network", "network error", 0);
  }
}

/** A JSON call: the parsed answer, null for 204, or an ApiError. */
export async function call(method, path, body) {
  const response = await send(method, path, body);
  if (!response.ok) throw await failure(response, response.sentToken);
  if (response.status === 204) return null;
  return response.json();
}

/** A download: the body as a Blob and the file name the server suggests. */
export async function download(path) {
  const response = await send("GET", path, undefined, "*/*");
  if (!response.ok) throw await failure(response, response.sentToken);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  return { blob: await response.blob(), name: match ? match[1] : "dialogue" };
}

/**
 * A streamed turn: calls `onEvent(name, data)` for each server-sent event as it arrives and
 * resolves when the stream ends. Throws ApiError when the turn is refused before it starts, and
 * ApiError "stream_lost" when the connection breaks midway; an abort through `signal` rejects
 * with an AbortError.
 */
export async function stream(path, body, signal, onEvent) {
  const response = await send("POST", path, { ...body, stream: true }, "text/event-stream", signal);
  if (!response.ok) throw await failure(response, response.sentToken);
  const type = response.headers.get("Content-Type") || "";
  if (!type.startsWith("text/event-stream")) {
    // A server that answered whole: the same events, at once.
    const whole = await response.json();
    onEvent("message", { ...whole.message, dialogue_id: whole.dialogue_id });
    onEvent("delta", { content: whole.reply.content });
    onEvent("reply", { ...whole.reply, dialogue_id: whole.dialogue_id });
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (cause) {
      if (cause && cause.name === "AbortError") throw cause;
      throw new ApiError(0, "stream_lost", "the connection broke during the reply", 0);
    }
    if (chunk.done) break;
    buffer += chunk.value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}
