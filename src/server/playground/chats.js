// The playground's conversations and parameters kept in the browser (localStorage), and
// the list of conversations. Loaded before playground.js, whose state it reads when called.
"use strict";

// ---------------------------------------------------------------- storage

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
  try { localStorage.setItem(STORE, JSON.stringify(values)); } catch (_) { /* storage full or off */ }
}

function readStore() {
  try {
    const saved = JSON.parse(localStorage.getItem(CHATS) || "null");
    if (saved && Array.isArray(saved.chats)) {
      const chats = saved.chats.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages))
        .map((c) => {
          const chat = { ...c, messages: c.messages.filter((m) => m && typeof m.content === "string"
            && (m.role === "user" || m.role === "assistant")) };
          chat.updated = Number.isFinite(c.updated) ? c.updated : 0;
          chat.title = typeof c.title === "string" && c.title ? c.title : titleOf(chat);
          return chat;
        });
      return { current: typeof saved.current === "string" ? saved.current : null, chats };
    }
  } catch (_) { /* unreadable: start afresh */ }
  return { current: null, chats: [] };
}

// Writes the conversations; when the browser's quota is reached, drops the oldest ones.
function saveStore() {
  store.current = current ? current.id : null;
  for (;;) {
    try {
      localStorage.setItem(CHATS, JSON.stringify(store));
      return;
    } catch (e) {
      const others = store.chats.filter((c) => c !== current && c !== streaming);
      if (!others.length) { showError("Could not save this chat in the browser: " + e.message); return; }
      const oldest = others.reduce((a, b) => (a.updated <= b.updated ? a : b));
      store.chats = store.chats.filter((c) => c !== oldest);
      renderChatList();
    }
  }
}

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

function titleOf(chat) {
  const first = chat.messages.find((m) => m.role === "user");
  const text = first ? first.content.replace(/\s+/g, " ").trim() : "";
  return text ? (text.length > 60 ? text.slice(0, 57) + "…" : text) : "New chat";
}

function touch(chat) {
  chat.updated = Date.now();
  chat.title = titleOf(chat);
  if (!store.chats.includes(chat)) store.chats.unshift(chat);
  saveStore();
  renderChatList();
}

function when(time) {
  const d = new Date(time);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toLocaleDateString([], { month: "short", day: "numeric" });
}

function renderChatList() {
  const list = $("chat-list");
  list.replaceChildren();
  const chats = [...store.chats].sort((a, b) => b.updated - a.updated);
  for (const chat of chats) {
    const li = el("li");
    if (chat === current) li.className = "current";
    const open = el("button", "open-chat");
    open.type = "button";
    open.title = chat.title;
    open.append(el("span", "title", chat.title), el("span", "when", when(chat.updated)));
    open.addEventListener("click", () => { switchTo(chat); closeDrawers(); });
    const del = el("button", "delete-chat", "✕");
    del.type = "button";
    del.setAttribute("aria-label", "Delete chat: " + chat.title);
    del.title = "Delete";
    del.addEventListener("click", () => {
      if (!del.classList.contains("confirm")) {
        del.classList.add("confirm");
        del.textContent = "Delete?";
        setTimeout(() => { del.classList.remove("confirm"); del.textContent = "✕"; }, 3000);
        return;
      }
      deleteChat(chat);
    });
    li.append(open, del);
    list.append(li);
  }
  $("no-chats").hidden = store.chats.length > 0;
}

function deleteChat(chat) {
  if (chat === streaming && controller) controller.abort();
  store.chats = store.chats.filter((c) => c !== chat);
  if (chat === current) { current = null; renderChat(); }
  saveStore();
  renderChatList();
}

function switchTo(chat) {
  if (chat === current) return;
  if (controller) controller.abort();
  showError("");
  current = chat;
  saveStore();
  renderChat();
  renderChatList();
}

function newChat() {
  if (controller) controller.abort();
  current = null;
  saveStore();
  renderChat();
  renderChatList();
  showError("");
  $("input").focus();
}
