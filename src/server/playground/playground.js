// The llama32 playground: a chat on /v1/chat/completions (streamed), a parameter panel kept
// in localStorage, per-answer stats. Model output and user text only ever reach the page
// as text nodes (never as HTML).
"use strict";

const STORE = "llama32.playground.params";
const NUMBERS = ["temperature", "top_p", "top_k", "min_p", "max_tokens", "seed",
  "frequency_penalty", "presence_penalty", "repetition_penalty"];
const INTEGERS = new Set(["top_k", "max_tokens", "seed"]);
const $ = (id) => document.getElementById(id);

let model = null;
let history = [];
let controller = null;

function loadParams() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(STORE) || "{}") || {}; } catch (_) { saved = {}; }
  for (const [name, value] of Object.entries(saved)) {
    const field = $("p-" + name);
    if (field && typeof value === "string") field.value = value;
  }
}

function saveParams() {
  const values = {};
  for (const field of document.querySelectorAll("#params input, #params textarea")) {
    values[field.id.slice(2)] = field.value;
  }
  localStorage.setItem(STORE, JSON.stringify(values));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("p-api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (r.status === 401) {
      $("key-row").hidden = false;
      $("model").textContent = "API key needed (Parameters)";
      return;
    }
    const body = await r.json();
    const m = body.data && body.data[0];
    if (!m) throw new Error("no model listed");
    model = m.id;
    $("model").textContent = m.id + (m.max_model_len ? " · context " + m.max_model_len + " tokens" : "");
  } catch (e) {
    $("model").textContent = "server unreachable: " + e.message;
  }
}

// Markdown-lite: ``` fenced blocks become <pre><code>, `inline` becomes <code>; the rest is text.
function render(target, text) {
  target.replaceChildren();
  const parts = text.split("```");
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const newline = part.indexOf("\n");
      const lang = newline > 0 ? part.slice(0, newline).trim() : "";
      const code = /^[\w+-]*$/.test(lang) && newline >= 0 ? part.slice(newline + 1) : part;
      const pre = document.createElement("pre");
      const el = document.createElement("code");
      el.textContent = code;
      pre.appendChild(el);
      target.appendChild(pre);
      return;
    }
    part.split(/(`[^`\n]+`)/).forEach((piece) => {
      if (piece.length > 2 && piece.startsWith("`") && piece.endsWith("`")) {
        const el = document.createElement("code");
        el.textContent = piece.slice(1, -1);
        target.appendChild(el);
      } else if (piece) {
        target.appendChild(document.createTextNode(piece));
      }
    });
  });
}

function addMessage(role, text) {
  $("examples").hidden = true;
  const box = document.createElement("div");
  box.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "body";
  render(body, text);
  box.appendChild(body);
  $("messages").appendChild(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

function requestBody() {
  const messages = [];
  const system = $("p-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
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
  $("stop").disabled = !busy;
}

// Reads `data:` events from a fetch body; calls onEvent with each parsed JSON object.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function statsLine(s) {
  const parts = [s.tokens + " tokens"];
  if (s.first !== null) parts.push("TTFT " + ((s.first - s.start) / 1000).toFixed(2) + " s");
  if (s.first !== null && s.tokens > 1 && s.end > s.first) {
    parts.push(((s.tokens - 1) / ((s.end - s.first) / 1000)).toFixed(1) + " tok/s");
  }
  parts.push("finish: " + s.finish);
  return parts.join(" · ");
}

async function send(text) {
  if (!text.trim() || controller) return;
  showError("");
  history.push({ role: "user", content: text });
  const userBox = addMessage("user", text);
  $("input").value = "";
  controller = new AbortController();
  setBusy(true);
  const s = { start: performance.now(), first: null, end: null, tokens: 0, finish: "…" };
  let answer = "";
  let box = null;
  const stats = document.createElement("div");
  stats.className = "stats";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!r.ok) {
      let message = "HTTP " + r.status;
      try { message = (await r.json()).error.message || message; } catch (_) { /* not JSON */ }
      if (r.status === 401) $("key-row").hidden = false;
      throw new Error(message);
    }
    box = addMessage("assistant", "");
    box.appendChild(stats);
    await readEvents(r, (event) => {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) s.tokens = event.usage.completion_tokens;
      const choice = event.choices && event.choices[0];
      if (!choice) return;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        if (s.first === null) s.first = performance.now();
        if (!event.usage) s.tokens += 1;
        answer += piece;
        render(box.querySelector(".body"), answer);
        box.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) s.finish = choice.finish_reason;
      s.end = performance.now();
      stats.textContent = statsLine(s);
    });
    history.push({ role: "assistant", content: answer });
  } catch (e) {
    if (e.name === "AbortError") {
      s.finish = "stopped";
      if (answer) history.push({ role: "assistant", content: answer });
    } else {
      showError(e.message);
      if (!box) {
        history.pop();
        userBox.remove();
        $("input").value = text;
      }
    }
  } finally {
    s.end = s.end || performance.now();
    if (box) stats.textContent = statsLine(s);
    controller = null;
    setBusy(false);
  }
}

function newChat() {
  if (controller) controller.abort();
  history = [];
  for (const el of document.querySelectorAll("#messages .msg")) el.remove();
  $("examples").hidden = false;
  showError("");
}

function init() {
  loadParams();
  for (const field of document.querySelectorAll("#params input, #params textarea")) {
    field.addEventListener("change", saveParams);
    field.addEventListener("input", saveParams);
  }
  $("p-api_key").addEventListener("change", loadModel);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send($("input").value); });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send($("input").value); }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", newChat);
  $("reset-params").addEventListener("click", () => {
    localStorage.removeItem(STORE);
    for (const field of document.querySelectorAll("#params input, #params textarea")) {
      if (field.id !== "p-api_key") field.value = field.defaultValue;
    }
  });
  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", () => send(button.textContent));
  }
  $("settings-toggle").addEventListener("click", () => {
    const open = $("params").classList.toggle("open");
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  });
  loadModel();
}

init();
