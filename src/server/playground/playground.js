// The llama32 playground: a chat on /v1/chat/completions (streamed), conversations and a
// parameter panel kept in localStorage, per-answer stats, Markdown answers.
//
// Safety: model output and user text only ever reach the page as text nodes. The Markdown
// renderer (markdown.js, loaded first with chats.js) builds elements with createElement and fills them with textContent /
// createTextNode; nothing in this file assigns innerHTML, so `<script>` or any other HTML in
// an answer shows as the characters it is. Links are made only for http(s) URLs.
"use strict";

const STORE = "llama32.playground.params";
const CHATS = "llama32.playground.chats";
const NUMBERS = ["temperature", "top_p", "top_k", "min_p", "max_tokens", "seed",
  "frequency_penalty", "presence_penalty", "repetition_penalty"];
const INTEGERS = new Set(["top_k", "max_tokens", "seed"]);
// What a sampling value means when it is at its neutral setting.
const OFF = { top_k: 0, min_p: 0, repetition_penalty: 1, frequency_penalty: 0, presence_penalty: 0, top_p: 1 };
const NARROW = { chats: "(max-width: 1099px)", params: "(max-width: 759px)" };
const $ = (id) => document.getElementById(id);

let model = null;
let controller = null;   // the AbortController of the request in flight
let streaming = null;    // the conversation being answered
let connectTimer = null;
let connectDelay = 1000;
let store = { current: null, chats: [] };
let current = null;      // the conversation on screen (null: a new, unsaved one)
let live = null;         // the answer being streamed: {chat, msg, s}
let leaving = false;     // the page is being closed or reloaded

// ---------------------------------------------------------------- the conversation on screen

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function nearBottom() {
  const m = $("messages");
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollDown() {
  const m = $("messages");
  m.scrollTop = m.scrollHeight;
}

async function copyText(text, button) {
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      ok = true;
    }
  } catch (_) { ok = false; }
  if (!ok) {
    // Plain-HTTP pages on another host have no clipboard API: the old way.
    const area = el("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
    area.remove();
  }
  const label = button.textContent;
  button.textContent = ok ? "Copied" : "Copy failed";
  setTimeout(() => { button.textContent = label; }, 1500);
}

function actionButton(label, onClick, idleOnly) {
  const b = el("button", idleOnly ? "idle-only" : "", label);
  b.type = "button";
  if (idleOnly) b.disabled = controller !== null;
  b.addEventListener("click", onClick);
  return b;
}

function messageBox(msg, index) {
  const box = el("div", "msg " + msg.role);
  const body = el("div", "body");
  box.append(body);
  if (msg.role === "user") {
    body.textContent = msg.content;
    const actions = el("div", "actions");
    const edit = actionButton("Edit", () => editMessage(box, index), true);
    edit.classList.add("edit");
    actions.append(edit);
    if (current && streaming !== current && index === current.messages.length - 1) {
      // Unanswered (a refused regenerate or edit): ask again.
      const again = actionButton("Retry", () => { if (!controller && current) generate(current); }, true);
      again.classList.add("retry");
      actions.append(again);
    }
    box.append(actions);
  } else {
    body.append(markdown(msg.content));
    const stats = el("div", "stats", msg.stats || "");
    stats.hidden = !msg.stats;
    const actions = el("div", "actions");
    const copy = actionButton("Copy", () => copyText(msg.content, copy), false);
    copy.classList.add("copy");
    actions.append(copy);
    if (current && streaming !== current && index === current.messages.length - 1) {
      const regen = actionButton("Regenerate", regenerate, true);
      regen.classList.add("regenerate");
      actions.append(regen);
    }
    box.append(stats, actions);
  }
  return box;
}

function renderChat() {
  for (const node of document.querySelectorAll("#messages .msg")) node.remove();
  const messages = current ? current.messages : [];
  $("examples").hidden = messages.length > 0;
  messages.forEach((msg, i) => $("messages").append(messageBox(msg, i)));
  scrollDown();
}

function editMessage(box, index) {
  if (controller || !current) return;
  const chat = current;
  const original = chat.messages[index].content;
  box.classList.add("editing");
  const editor = el("textarea", "editor");
  editor.value = original;
  editor.setAttribute("aria-label", "Edit message");
  const actions = el("div", "actions");
  const cancel = actionButton("Cancel", () => renderChat(), false);
  const save = actionButton("Send", () => {
    const text = editor.value;
    if (!text.trim() || controller || chat !== current) return;
    chat.messages = chat.messages.slice(0, index);
    chat.messages.push({ role: "user", content: text });
    touch(chat);
    renderChat();
    generate(chat);
  }, true);
  save.classList.add("save-edit");
  editor.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); save.click(); }
    if (e.key === "Escape") cancel.click();
  });
  actions.append(cancel, save);
  box.replaceChildren(editor, actions);
  editor.focus();
  editor.setSelectionRange(editor.value.length, editor.value.length);
}

function regenerate() {
  if (controller || !current) return;
  const last = current.messages[current.messages.length - 1];
  if (!last || last.role !== "assistant") return;
  current.messages.pop();
  renderChat();
  generate(current);
}

// ---------------------------------------------------------------- the server

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("p-api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, tone, detail) {
  const m = $("model");
  m.replaceChildren(text);
  if (detail) m.append(el("span", "detail", detail));
  m.title = detail ? text + " · " + detail : text;
  m.className = "muted" + (tone ? " " + tone : "");
}

function setNotice(text, bad) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
  n.classList.toggle("bad", Boolean(bad));
}

function unreachable(lead) {
  return (lead ? lead + " the" : "The") + " server at " + location.host + " is not reachable. Is llama32 serve still running?";
}

// A fetch that could not reach the server (Chromium, Firefox, Safari wordings), as opposed to
// an HTTP error or a bug.
function networkError(e) {
  return e instanceof TypeError && /fetch|network|load failed/i.test(e.message);
}

function retry(ms) {
  clearTimeout(connectTimer);
  connectTimer = setTimeout(connect, ms);
}

// Health first (no key needed): 503 `loading` while the model loads, then the model list.
async function connect() {
  clearTimeout(connectTimer);
  let r;
  try {
    r = await fetch("/health", { cache: "no-store" });
  } catch (_) {
    setStatus("server not reachable", "bad");
    setNotice(unreachable() + " Retrying…", true);
    connectDelay = Math.min(connectDelay * 2, 10000);
    retry(connectDelay);
    return;
  }
  connectDelay = 1000;
  let health = {};
  try { health = await r.json(); } catch (_) { health = {}; }
  if (r.status === 503 && health.status === "loading") {
    setStatus("model loading…", "warn");
    setNotice("The server is loading the model. This page connects as soon as it is ready.");
    retry(1000);
    return;
  }
  if (r.status === 503 && health.status === "draining") {
    setStatus("server shutting down", "bad");
    setNotice("The server is shutting down. Retrying…", true);
    retry(2000);
    return;
  }
  if (!r.ok) {
    setStatus("server error " + r.status, "bad");
    setNotice("/health answered HTTP " + r.status + ". Retrying…", true);
    retry(3000);
    return;
  }
  await loadModel();
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers(), cache: "no-store" });
    if (r.status === 401) {
      $("key-row").hidden = false;
      setStatus("API key needed (Parameters)", "warn");
      setNotice("This server needs an API key: enter it under Parameters.");
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    const body = await r.json();
    const m = body.data && body.data[0];
    if (!m) throw new Error("no model listed");
    if (!m.sampling_defaults || !m.max_model_len) { retry(1000); return; }  // loaded a moment ago
    model = m.id;
    setStatus(m.id, "", "context " + m.max_model_len + " tokens");
    setNotice("");
    showDefaults(m.sampling_defaults, m.max_model_len);
  } catch (e) {
    if (networkError(e)) { retry(1000); return; }
    setStatus("model list unavailable", "bad");
    setNotice("Could not read /v1/models: " + e.message, true);
  }
}

function showDefaults(defaults, context) {
  for (const small of document.querySelectorAll("#params .default[data-for]")) {
    const name = small.dataset.for;
    const field = $("p-" + name);
    if (name === "max_tokens") {
      small.textContent = "default: up to " + context;
      field.max = String(context);
      continue;
    }
    const value = defaults[name];
    if (value === undefined || value === null) continue;
    const off = OFF[name] === value && name !== "top_p" ? " (off)" : "";
    small.textContent = "default: " + value + off;
    field.placeholder = String(value);
  }
}

function requestBody(chat) {
  const messages = [];
  const system = $("p-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of chat.messages) messages.push({ role: m.role, content: m.content });
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  if (model) body.model = model;
  for (const name of NUMBERS) {
    const raw = $("p-" + name).value.trim();
    if (raw === "") continue;
    body[name] = INTEGERS.has(name) ? Number.parseInt(raw, 10) : Number(raw);
  }
  const stop = $("p-stop").value.split("\n").filter((s) => s.length > 0);
  if (stop.length) body.stop = stop;
  return body;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("send").hidden = busy;
  $("stop").disabled = !busy;
  $("stop").hidden = !busy;
  for (const b of document.querySelectorAll("#messages .idle-only")) b.disabled = busy;
}

// Reads `data:` events from a fetch body; calls onEvent with each parsed JSON object.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trimStart();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

// Tokens, time to first token, decode rate and finish reason. The rate counts the tokens
// after the first over the time since the first arrived (decode only, not prefill), and is
// left out when too little time passed to measure (a few tokens in one network read).
function statsLine(s) {
  const parts = [s.tokens + " tokens"];
  if (s.first !== null) parts.push("TTFT " + ((s.first - s.start) / 1000).toFixed(2) + " s");
  const decode = s.last !== null && s.first !== null ? s.last - s.first : 0;
  if (s.tokens > 1 && decode >= 1 && decode >= (s.tokens - 1) * 0.05) {
    parts.push(((s.tokens - 1) / (decode / 1000)).toFixed(1) + " tok/s");
  }
  parts.push("finish: " + s.finish);
  return parts.join(" · ");
}

async function send(text) {
  if (!text.trim() || controller) return;
  if (!current) current = { id: newId(), title: "", created: Date.now(), updated: Date.now(), messages: [] };
  const chat = current;
  const msg = { role: "user", content: text };
  chat.messages.push(msg);
  touch(chat);
  $("input").value = "";
  const outcome = await generate(chat);
  if (outcome === "refused" && chat.messages[chat.messages.length - 1] === msg) {
    // Nothing was answered (a 400, or the server is down): the message goes back to the
    // composer, to fix and send again.
    chat.messages.pop();
    if (!chat.messages.length) store.chats = store.chats.filter((c) => c !== chat);
    else chat.title = titleOf(chat);
    saveStore();
    renderChatList();
    if (chat === current) {
      renderChat();
      if (!$("input").value) $("input").value = text;
    }
  }
}

// Streams an answer to the conversation's last (user) message. Returns "ok", "stopped",
// "failed" (an answer started, then an error) or "refused" (no answer at all).
async function generate(chat) {
  showError("");
  controller = new AbortController();
  streaming = chat;
  if (chat === current) renderChat();
  setBusy(true);
  const s = { start: performance.now(), first: null, last: null, tokens: 0, counted: 0, finish: "…" };
  const msg = { role: "assistant", content: "", stats: "" };
  live = { chat, msg, s };
  let box = null;
  let pending = false;
  const paint = () => {
    pending = false;
    if (!box || chat !== current) return;
    const follow = nearBottom();
    const body = box.querySelector(".body");
    body.replaceChildren(markdown(msg.content));
    const stats = box.querySelector(".stats");
    stats.textContent = msg.stats;
    stats.hidden = !msg.stats;
    if (follow) scrollDown();
  };
  let outcome = "ok";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody(chat)), signal: controller.signal,
    });
    if (!r.ok) {
      let message = "HTTP " + r.status;
      try { message = (await r.json()).error.message || message; } catch (_) { /* not JSON */ }
      if (r.status === 401) $("key-row").hidden = false;
      const error = new Error(message);
      error.status = r.status;
      throw error;
    }
    chat.messages.push(msg);
    if (chat === current) {
      box = messageBox(msg, chat.messages.length - 1);
      box.classList.add("streaming");
      for (const b of box.querySelectorAll(".idle-only")) b.disabled = true;
      $("messages").append(box);
      scrollDown();
    }
    await readEvents(r, (event) => {
      if (event.error) throw new Error(event.error.message || "the server reported an error");
      if (event.usage) s.tokens = event.usage.completion_tokens;
      const choice = event.choices && event.choices[0];
      if (!choice) return;
      const piece = choice.delta && choice.delta.content;
      const now = performance.now();
      if (piece) {
        if (s.first === null) s.first = now;
        s.last = now;
        s.counted += 1;
        if (!event.usage) s.tokens = Math.max(s.tokens, s.counted);
        msg.content += piece;
      }
      if (choice.finish_reason) { s.finish = choice.finish_reason; if (s.first !== null) s.last = now; }
      msg.stats = statsLine(s);
      if (!pending) { pending = true; requestAnimationFrame(paint); }
    });
  } catch (e) {
    if (e.name === "AbortError" || leaving) {
      s.finish = "stopped";
      outcome = "stopped";
    } else {
      outcome = chat.messages[chat.messages.length - 1] === msg ? "failed" : "refused";
      if (networkError(e)) {
        showError(unreachable(outcome === "refused" ? "Not sent:" : "The answer broke off:"));
        connect();
      } else {
        showError(e.status === 503 && /loading/i.test(e.message) ? "The model is still loading: try again in a moment."
          : e.message);
      }
      if (outcome === "failed") s.finish = "error";
    }
  } finally {
    const kept = store.chats.includes(chat) || chat === current;
    if (chat.messages[chat.messages.length - 1] === msg) {
      if (!msg.content && outcome === "stopped") chat.messages.pop();  // stopped before a word
      else msg.stats = statsLine(s);
      if (kept) touch(chat);
    }
    controller = null;
    streaming = null;
    live = null;
    setBusy(false);
    if (chat === current) renderChat();
  }
  return outcome;
}

// ---------------------------------------------------------------- panels

function narrow(panel) {
  return window.matchMedia(NARROW[panel]).matches;
}

function panelShown(panel) {
  return narrow(panel) ? $(panel).classList.contains("open") : !document.body.classList.contains("hide-" + panel);
}

function syncPanels() {
  $("chats-toggle").setAttribute("aria-expanded", String(panelShown("chats")));
  $("settings-toggle").setAttribute("aria-expanded", String(panelShown("params")));
  const drawer = ["chats", "params"].some((p) => narrow(p) && $(p).classList.contains("open"));
  $("backdrop").hidden = !drawer;
}

function togglePanel(panel) {
  if (narrow(panel)) {
    const open = !$(panel).classList.contains("open");
    closeDrawers();
    $(panel).classList.toggle("open", open);
  } else {
    document.body.classList.toggle("hide-" + panel);
  }
  syncPanels();
}

function closeDrawers() {
  $("chats").classList.remove("open");
  $("params").classList.remove("open");
  syncPanels();
}

// ---------------------------------------------------------------- start

function init() {
  loadParams();
  for (const field of document.querySelectorAll("#params input, #params textarea")) {
    field.addEventListener("change", saveParams);
    field.addEventListener("input", saveParams);
  }
  $("p-api_key").addEventListener("change", connect);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send($("input").value); });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send($("input").value); }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", () => { newChat(); closeDrawers(); });
  $("reset-params").addEventListener("click", () => {
    localStorage.removeItem(STORE);
    for (const field of document.querySelectorAll("#params input, #params textarea")) {
      if (field.id !== "p-api_key") field.value = field.defaultValue;
    }
  });
  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", () => send(button.textContent));
  }
  $("settings-toggle").addEventListener("click", () => togglePanel("params"));
  $("chats-toggle").addEventListener("click", () => togglePanel("chats"));
  for (const button of document.querySelectorAll(".close-panel")) button.addEventListener("click", closeDrawers);
  $("backdrop").addEventListener("click", closeDrawers);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDrawers(); });
  for (const query of Object.values(NARROW)) window.matchMedia(query).addEventListener("change", syncPanels);
  // Leaving or reloading mid-answer keeps what came so far, marked stopped.
  window.addEventListener("beforeunload", () => { leaving = true; });
  window.addEventListener("pageshow", () => { leaving = false; });
  window.addEventListener("pagehide", () => {
    if (!live || live.chat.messages[live.chat.messages.length - 1] !== live.msg) return;
    if (!live.msg.content) live.chat.messages.pop();
    live.s.finish = "stopped";
    live.msg.stats = statsLine(live.s);
    if (store.chats.includes(live.chat)) saveStore();
  });
  window.addEventListener("storage", (e) => {
    if (e.key !== CHATS || controller) return;
    const id = current ? current.id : null;
    store = readStore();
    current = store.chats.find((c) => c.id === id) || null;
    renderChatList();
    renderChat();
  });

  store = readStore();
  current = store.chats.find((c) => c.id === store.current) || null;
  renderChatList();
  renderChat();
  syncPanels();
  connect();
}

// For tests and the curious: the Markdown renderer (text to a DocumentFragment) and the
// stats line.
window.llama32 = Object.freeze({ markdown, statsLine });

init();
