// The chat page: log-in, the list of dialogues, one open dialogue, the composer. Plain modules,
// no framework; every control is a real button, input or link so that keyboard and screen readers
// work without extra code. docs/web.md describes the choices.

import * as api from "./api.js";
import { el, finishNote, renderResources, renderText, when } from "./render.js";

const $ = (id) => document.getElementById(id);
const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Messages per page when reading a dialogue backwards from its end. */
const PAGE = 30;

const state = {
  dialogueId: null,
  title: "",
  /** The earliest `seq` shown; older ones load as the log scrolls up. */
  firstSeq: 1,
  loadingEarlier: false,
  /** The AbortController of the turn streaming now. */
  streaming: null,
  list: { cursor: null, done: false, loading: false, generation: 0 },
  /** Bumped on each dialogue opened, so that answers for an earlier one are dropped. */
  opened: 0,
};

// ------------------------------------------------------------------ status and errors

function say(text, action) {
  const status = $("status");
  status.replaceChildren();
  if (!text) return;
  status.append(el("span", {}, text));
  if (action) {
    const button = el("button", { type: "button" }, action.label);
    button.addEventListener("click", action.run);
    status.append(" ", button);
  }
}

function fail(error) {
  if (error && error.name === "AbortError") return;
  if (error instanceof api.ApiError && error.code === "unauthorized") return; // back at the log-in form
  say(api.describe(error));
}

// ------------------------------------------------------------------ log-in

function showAuth(message) {
  stopStreaming();
  $("app").hidden = true;
  $("account").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = message || "";
  $("password").value = "";
  $("email").focus();
}

api.whenUnauthorized(() => showAuth("Your session has ended. Log in again."));

async function credentials(path) {
  const email = $("email").value.trim();
  const password = $("password").value;
  if (!email || !password) {
    $("auth-error").textContent = "Enter your email and a password.";
    return null;
  }
  if (path === "/api/v1/signup" && password.length < 8) {
    $("auth-error").textContent = "Choose a password of at least 8 characters.";
    return null;
  }
  return { email, password };
}

async function logIn(body) {
  const token = await api.call("POST", "/api/v1/login", body);
  api.setToken(token.access_token);
  $("password").value = "";
  await showApp();
}

$("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = await credentials("/api/v1/login");
  if (!body) return;
  $("auth-error").textContent = "";
  try {
    await logIn(body);
  } catch (error) {
    $("auth-error").textContent = api.describe(error);
  }
});

$("signup").addEventListener("click", async () => {
  const body = await credentials("/api/v1/signup");
  if (!body) return;
  $("auth-error").textContent = "";
  try {
    await api.call("POST", "/api/v1/signup", body);
    await logIn(body);
  } catch (error) {
    $("auth-error").textContent = api.describe(error);
  }
});

$("logout").addEventListener("click", async () => {
  stopStreaming();
  try {
    await api.call("POST", "/api/v1/logout");
  } catch {
    // Logged out either way: the token is forgotten here.
  }
  api.setToken(null);
  location.hash = "";
  showAuth("You have logged out.");
});

$("delete-account").addEventListener("click", () => {
  confirmDialog({
    title: "Delete your account?",
    text: "Every dialogue and message is erased, and you are logged out everywhere. This cannot be undone. " +
      "Export what you want to keep first.",
    yes: "Yes, delete my account",
    password: true,
    action: async (password) => {
      await api.call("DELETE", "/api/v1/me", { password });
      api.setToken(null);
      location.hash = "";
      showAuth("Your account and everything in it were deleted.");
    },
  });
});

async function showApp() {
  $("auth").hidden = true;
  $("app").hidden = false;
  $("account").hidden = false;
  say("");
  try {
    const me = await api.call("GET", "/api/v1/me");
    $("who").textContent = me.email;
  } catch (error) {
    fail(error);
    return;
  }
  reloadList();
  await route();
  // Ready to write: the message field is where a person goes next.
  $("message").focus();
}

// ------------------------------------------------------------------ the list of dialogues

function reloadList() {
  state.list = { cursor: null, done: false, loading: false, generation: state.list.generation + 1 };
  $("dialogue-list").replaceChildren();
  loadMoreDialogues();
}

async function loadMoreDialogues() {
  const list = state.list;
  if (list.loading || list.done || !api.loggedIn()) return;
  list.loading = true;
  const query = list.cursor ? `&cursor=${encodeURIComponent(list.cursor)}` : "";
  try {
    const page = await api.call("GET", `/api/v1/dialogues?limit=20${query}`);
    if (list !== state.list) return;
    for (const dialogue of page.dialogues) $("dialogue-list").append(listItem(dialogue));
    list.cursor = page.next_cursor;
    list.done = !page.next_cursor;
    $("dialogues-more").textContent = list.done
      ? ($("dialogue-list").children.length ? "" : "No dialogues yet.")
      : "Loading more as you scroll…";
    markCurrent();
  } catch (error) {
    // The list is secondary: its trouble is told in the list, not over the dialogue's status.
    if (list === state.list && !(error instanceof api.ApiError && error.code === "unauthorized")) {
      $("dialogues-more").textContent = api.describe(error);
    }
  } finally {
    list.loading = false;
  }
  // A short list leaves the sentinel in view: keep filling until it is not.
  if (!list.done && list === state.list && inView($("dialogues-more"), $("dialogues"))) loadMoreDialogues();
}

function listItem(dialogue) {
  const link = el("a", { href: `#/d/${dialogue.id}` }, dialogue.title);
  return el("li", { "data-id": dialogue.id }, link, el("span", { class: "when" }, when(dialogue.updated_at)));
}

function markCurrent() {
  for (const item of $("dialogue-list").children) {
    const link = item.querySelector("a");
    if (item.dataset.id === state.dialogueId) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function inView(node, root) {
  const a = node.getBoundingClientRect();
  const b = root.getBoundingClientRect();
  return a.top < b.bottom && a.bottom > b.top;
}

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadMoreDialogues();
}, { root: $("dialogues") }).observe($("dialogues-more"));

// ------------------------------------------------------------------ one dialogue

async function route() {
  const match = /^#\/d\/(.+)$/.exec(location.hash);
  const id = match && ID.test(match[1]) ? match[1] : null;
  if (id && id === state.dialogueId) return;
  stopStreaming();
  if (id) await openDialogue(id);
  else newDialogue();
}

window.addEventListener("hashchange", () => {
  if (api.loggedIn()) route();
});

function setTitle(title) {
  state.title = title;
  $("title").textContent = title;
  document.title = `${title} — ifs-guide`;
}

function newDialogue() {
  state.opened += 1;
  state.dialogueId = null;
  state.firstSeq = 1;
  setTitle("New dialogue");
  document.title = "ifs-guide";
  $("messages").replaceChildren();
  $("earlier").hidden = true;
  $("tools").hidden = true;
  $("first-disclaimer").hidden = false;
  closeRename();
  markCurrent();
}

async function openDialogue(id) {
  const opened = ++state.opened;
  state.dialogueId = id;
  closeRename();
  markCurrent();
  $("messages").replaceChildren();
  $("earlier").hidden = true;
  $("first-disclaimer").hidden = true;
  $("tools").hidden = false;
  say("");
  try {
    const dialogue = await api.call("GET", `/api/v1/dialogues/${id}`);
    if (opened !== state.opened) return;
    setTitle(dialogue.title);
    const page = await api.call("GET",
      `/api/v1/messages?dialogue_id=${id}&before=${dialogue.message_count + 1}&limit=${PAGE}`);
    if (opened !== state.opened) return;
    $("messages").replaceChildren(...page.messages.map(messageItem));
    state.firstSeq = page.messages.length ? page.messages[0].seq : 1;
    $("earlier").hidden = state.firstSeq <= 1;
    $("earlier").textContent = "Earlier messages load as you scroll up.";
    refreshLast();
    scrollToEnd();
  } catch (error) {
    if (opened !== state.opened) return;
    if (error instanceof api.ApiError && error.status === 404) {
      newDialogue();
      location.hash = "";
      reloadList();
    }
    fail(error);
  }
}

async function loadEarlier() {
  if (state.loadingEarlier || !state.dialogueId || state.firstSeq <= 1) return;
  state.loadingEarlier = true;
  const opened = state.opened;
  try {
    const page = await api.call("GET",
      `/api/v1/messages?dialogue_id=${state.dialogueId}&before=${state.firstSeq}&limit=${PAGE}`);
    if (opened !== state.opened || !page.messages.length) return;
    const log = $("log");
    const before = log.scrollHeight;
    $("messages").prepend(...page.messages.map(messageItem));
    log.scrollTop += log.scrollHeight - before;
    state.firstSeq = page.messages[0].seq;
    $("earlier").hidden = state.firstSeq <= 1;
  } catch (error) {
    fail(error);
  } finally {
    state.loadingEarlier = false;
  }
}

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadEarlier();
}, { root: $("log") }).observe($("earlier"));

function scrollToEnd() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

/** One message of the log. */
function messageItem(message) {
  const mine = message.role === "user";
  const item = el("li", {
    class: `msg ${mine ? "user" : "assistant"}`,
    "data-id": message.id,
    "data-seq": message.seq,
    "data-prev": message.prev_id || "",
  });
  item.append(el("p", { class: "meta" }, el("span", { class: "who" }, mine ? "You" : "Guide"),
    " ", el("time", { datetime: message.created_at }, when(message.created_at))));
  const text = el("div", { class: "text" });
  renderText(text, message.content);
  item.append(text);
  if (message.safety) item.append(renderResources(message.safety));
  const note = finishNote(message.finish_reason);
  item.append(el("p", { class: "note" }, note));
  item.dataset.versions = String(message.versions || 1);
  item.dataset.finish = message.finish_reason || "";
  const actions = el("div", { class: "actions" });
  if (mine) {
    const edit = el("button", { type: "button", class: "quiet", "aria-label": "Edit this message" }, "Edit");
    edit.addEventListener("click", () => startEdit(item, message.content));
    actions.append(edit);
  }
  item.append(actions);
  return item;
}

/** The last reply gets Regenerate and, once regenerated, its versions. */
function refreshLast() {
  for (const old of document.querySelectorAll(".last-actions")) old.remove();
  const last = $("messages").lastElementChild;
  if (!last || !last.classList.contains("assistant") || !last.dataset.id) return;
  const box = el("div", { class: "last-actions" });
  const count = Number(last.dataset.versions || 1);
  if (count > 1) box.append(versionsNav(last, count));
  const regenerate = el("button", { type: "button" }, "Regenerate");
  regenerate.addEventListener("click", () => {
    if (state.streaming) return;
    turn({ dialogue_id: state.dialogueId, regenerate: true, reply_id: last.dataset.id }, last);
  });
  box.append(regenerate);
  last.querySelector(".actions").append(box);
}

function versionsNav(item, count) {
  let shown = count;
  let versions = null;
  const label = el("span", { class: "version", "aria-live": "polite" }, `Version ${count} of ${count}`);
  const previous = el("button", { type: "button", class: "quiet", "aria-label": "Previous version" }, "‹");
  const next = el("button", { type: "button", class: "quiet", "aria-label": "Next version", disabled: true }, "›");
  const show = async (to) => {
    try {
      versions = versions || (await api.call("GET",
        `/api/v1/messages/${item.dataset.id}/versions?dialogue_id=${state.dialogueId}`)).versions;
    } catch (error) {
      fail(error);
      return;
    }
    shown = Math.min(Math.max(to, 1), versions.length);
    const version = versions[shown - 1];
    renderText(item.querySelector(".text"), version.content);
    label.textContent = `Version ${shown} of ${versions.length}`;
    const note = finishNote(version.finish_reason);
    item.querySelector(".note").textContent = shown === versions.length
      ? (note || "")
      : `An earlier version; the dialogue goes on from version ${versions.length}.${note ? ` ${note}.` : ""}`;
    previous.disabled = shown <= 1;
    next.disabled = shown >= versions.length;
  };
  previous.addEventListener("click", () => show(shown - 1));
  next.addEventListener("click", () => show(shown + 1));
  return el("span", { class: "versions" }, previous, label, next);
}

// ------------------------------------------------------------------ a turn

function setStreaming(controller) {
  state.streaming = controller;
  const busy = Boolean(controller);
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("log").setAttribute("aria-busy", busy ? "true" : "false");
  for (const button of document.querySelectorAll(".last-actions button, .msg .actions button")) button.disabled = busy;
}

function stopStreaming() {
  if (state.streaming) state.streaming.abort();
}

$("stop").addEventListener("click", () => {
  stopStreaming();
  $("message").focus();
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.streaming) {
    event.preventDefault();
    stopStreaming();
    $("message").focus();
  }
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (state.streaming) return;
  const text = $("message").value;
  if (!text.trim()) {
    say("Write a message first.");
    $("message").focus();
    return;
  }
  const body = { message: text };
  if (state.dialogueId) body.dialogue_id = state.dialogueId;
  await turn(body, null);
});

/**
 * Sends one turn and streams its reply into the log: into `replacing` (the reply being
 * regenerated) or a new item after the user's message.
 */
async function turn(body, replacing) {
  const controller = new AbortController();
  const opened = state.opened;
  setStreaming(controller);
  say("");
  let reply = replacing;
  let text = "";
  let ended = false;
  let frame = 0;
  const draw = () => {
    frame = 0;
    if (reply) {
      renderText(reply.querySelector(".text"), text);
      scrollToEnd();
    }
  };
  const started = (stored) => {
    if (!state.dialogueId) {
      // A new dialogue: its id is the first message's. The hash follows without reopening it.
      state.dialogueId = stored.dialogue_id;
      history.replaceState(null, "", `#/d/${stored.dialogue_id}`);
      $("first-disclaimer").hidden = true;
      $("tools").hidden = false;
      setTitle(stored.content.replace(/\s+/g, " ").trim().slice(0, 80));
    }
    if (!replacing) {
      $("message").value = "";
      $("messages").append(messageItem(stored));
      reply = el("li", { class: "msg assistant pending" },
        el("p", { class: "meta" }, el("span", { class: "who" }, "Guide")),
        el("div", { class: "text" }), el("p", { class: "note" }), el("div", { class: "actions" }));
      $("messages").append(reply);
    } else {
      reply.classList.add("pending");
      for (const extra of reply.querySelectorAll(".resources, .last-actions")) extra.remove();
      reply.querySelector(".note").textContent = "";
      renderText(reply.querySelector(".text"), "");
    }
    scrollToEnd();
  };
  try {
    await api.stream("/api/v1/dialogue", body, controller.signal, (name, data) => {
      if (opened !== state.opened) return;
      if (name === "message") started(data);
      else if (name === "delta") {
        text += data.content;
        if (!frame) frame = requestAnimationFrame(draw);
      } else if (name === "reply") {
        ended = true;
        // The stored reply is authoritative: a reply cut for safety is replaced here.
        const stored = messageItem(data);
        reply.replaceWith(stored);
        reply = stored;
      } else if (name === "error") {
        ended = true;
        const error = new api.ApiError(502, data.error.code, data.error.message, 0, data.error);
        if (frame) cancelAnimationFrame(frame);
        draw();
        if (text) {
          reply.classList.remove("pending");
          reply.querySelector(".note").textContent = "The reply failed partway.";
        } else {
          reply.remove();
        }
        say(api.describe(error));
      }
    });
    if (!ended && opened === state.opened) lost(reply);
  } catch (error) {
    if (opened !== state.opened) return;
    if (error.name === "AbortError") {
      if (frame) cancelAnimationFrame(frame);
      draw();
      if (reply) {
        reply.classList.remove("pending");
        reply.classList.add("stopped");
        reply.querySelector(".note").textContent = text ? "Stopped" : "Stopped before the reply began";
      }
      // The server keeps what was written, marked as stopped; reading it back gives the reply
      // its id (for Regenerate) once it is stored, which takes a moment after the request ends.
      const settle = async (attempt, expected) => {
        if (expected !== state.opened || state.streaming || !state.dialogueId) return;
        await reopen();
        const now = state.opened;
        const last = $("messages").lastElementChild;
        if (attempt < 5 && last && last.classList.contains("user")) setTimeout(() => settle(attempt + 1, now), 800);
      };
      setTimeout(() => settle(0, opened), 400);
    } else if (error instanceof api.ApiError && error.code === "stream_lost") {
      lost(reply);
    } else {
      if (error instanceof api.ApiError && error.details.dialogue_id && !state.dialogueId) {
        // The message was kept in a new dialogue although no reply came: show it there.
        location.hash = `#/d/${error.details.dialogue_id}`;
      }
      fail(error);
    }
  } finally {
    if (state.streaming === controller) setStreaming(null);
    if (frame) cancelAnimationFrame(frame);
    if (reply) reply.classList.remove("pending");
    refreshLast();
    reloadList();
  }
}

function lost(reply) {
  if (reply) reply.querySelector(".note").textContent = "The connection was lost during this reply.";
  say("The connection was lost during the reply. What the guide wrote is kept on the server.",
    { label: "Reload the dialogue", run: reopen });
}

/** Reads the open dialogue again from the server. */
async function reopen() {
  if (state.dialogueId) await openDialogue(state.dialogueId);
}

// ------------------------------------------------------------------ edit (a fork)

function startEdit(item, content) {
  if (state.streaming || item.querySelector(".edit")) return;
  const field = el("textarea", { id: `edit-${item.dataset.id}`, rows: "3", maxlength: "16000" });
  field.value = content;
  const form = el("form", { class: "edit" },
    el("label", { for: field.id }, "Edited message"), field,
    el("p", { class: "hint" }, "Sending starts a new dialogue from this point; this one stays as it is."),
    el("div", { class: "row" }, el("button", { type: "submit", class: "primary" }, "Send edit"),
      el("button", { type: "button", "data-cancel": "" }, "Cancel")));
  const cancel = () => {
    form.remove();
    item.querySelector(".text").hidden = false;
    item.querySelector(".actions button").focus();
  };
  form.querySelector("[data-cancel]").addEventListener("click", cancel);
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !state.streaming) cancel();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!field.value.trim()) return;
    const text = field.value;
    const from = state.dialogueId;
    try {
      let dialogueId = null;
      if (item.dataset.prev) {
        const fork = await api.call("POST", `/api/v1/dialogues/${from}/fork`, { message_id: item.dataset.prev });
        dialogueId = fork.id;
        location.hash = `#/d/${fork.id}`;
        await openDialogue(fork.id);
      } else {
        // The first message has nothing before it: the edit starts a dialogue of its own.
        location.hash = "";
        newDialogue();
      }
      say("");
      $("message").focus();
      await turn(dialogueId ? { dialogue_id: dialogueId, message: text } : { message: text }, null);
    } catch (error) {
      fail(error);
    }
  });
  item.querySelector(".text").hidden = true;
  item.querySelector(".text").after(form);
  field.focus();
}

// ------------------------------------------------------------------ rename, export, delete

function closeRename() {
  $("rename-form").hidden = true;
  $("title").hidden = false;
}

$("rename").addEventListener("click", () => {
  $("rename-input").value = state.title;
  $("title").hidden = true;
  $("rename-form").hidden = false;
  $("rename-input").select();
  $("rename-input").focus();
});

$("rename-cancel").addEventListener("click", () => {
  closeRename();
  $("rename").focus();
});

$("rename-form").addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    closeRename();
    $("rename").focus();
  }
});

$("rename-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const title = $("rename-input").value;
  if (!title.trim()) return;
  try {
    const dialogue = await api.call("PATCH", `/api/v1/dialogues/${state.dialogueId}`, { title });
    setTitle(dialogue.title);
    closeRename();
    $("rename").focus();
    const link = document.querySelector(`#dialogue-list li[data-id="${dialogue.id}"] a`);
    if (link) link.textContent = dialogue.title;
    say("Renamed.");
  } catch (error) {
    fail(error);
  }
});

function toggleExport(open) {
  $("export").setAttribute("aria-expanded", String(open));
  $("export-menu").hidden = !open;
}

$("export").addEventListener("click", () => {
  const open = $("export-menu").hidden;
  toggleExport(open);
  if (open) $("export-menu").querySelector("button").focus();
});

$("export-menu").addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    toggleExport(false);
    $("export").focus();
  }
});

for (const button of $("export-menu").querySelectorAll("button")) {
  button.addEventListener("click", async () => {
    toggleExport(false);
    try {
      const file = await api.download(`/api/v1/dialogues/${state.dialogueId}/export?format=${button.dataset.format}`);
      const url = URL.createObjectURL(file.blob);
      const link = el("a", { href: url, download: file.name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      say(`Downloaded ${file.name}.`);
    } catch (error) {
      fail(error);
    }
    $("export").focus();
  });
}

$("delete").addEventListener("click", () => {
  const id = state.dialogueId;
  confirmDialog({
    title: "Delete this dialogue?",
    text: `“${state.title}” and every message in it are erased. This cannot be undone.`,
    yes: "Yes, delete it",
    action: async () => {
      await api.call("DELETE", `/api/v1/dialogues/${id}`);
      location.hash = "";
      newDialogue();
      reloadList();
      say("The dialogue was deleted.");
      $("message").focus();
    },
  });
});

/** A modal question; `action` runs on yes, and an error it throws keeps the dialog open. */
function confirmDialog({ title, text, yes, password = false, action }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = yes;
  $("confirm-password-row").hidden = !password;
  $("confirm-password").value = "";
  $("confirm-error").textContent = "";
  const form = $("confirm-form");
  const opener = document.activeElement;
  const submit = async (event) => {
    event.preventDefault();
    if (event.submitter && event.submitter.value !== "yes") {
      dialog.close();
      return;
    }
    if (password && !$("confirm-password").value) {
      $("confirm-error").textContent = "Enter your password to confirm.";
      $("confirm-password").focus();
      return;
    }
    $("confirm-yes").disabled = true;
    try {
      await action($("confirm-password").value);
      dialog.close();
    } catch (error) {
      if (!dialog.open) return;
      $("confirm-error").textContent = api.describe(error);
    } finally {
      $("confirm-yes").disabled = false;
    }
  };
  form.onsubmit = submit;
  dialog.onclose = () => {
    $("confirm-password").value = "";
    if (opener && document.contains(opener) && !opener.closest("[hidden]")) opener.focus();
  };
  dialog.showModal();
  (password ? $("confirm-password") : $("confirm-yes")).focus();
}

$("new-dialogue").addEventListener("click", () => {
  if (location.hash) location.hash = "";
  else newDialogue();
  say("");
  $("message").focus();
});

// ------------------------------------------------------------------ start

if (api.loggedIn()) showApp();
else showAuth("");
