// The playground's Markdown renderer: model text to DOM nodes, built element by element
// from escaped text (never parsed as HTML). Loaded before playground.js, which calls
// `markdown(text)`.
"use strict";

// ---------------------------------------------------------------- Markdown

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch (_) {
    return null;
  }
}

function link(url, children) {
  const a = el("a");
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  a.append(...children);
  return a;
}

// Inline spans: `code`, [text](http...), bare http(s) URLs, ***both***, **bold**, __bold__,
// ~~strike~~, *italic*, _italic_, and backslash escapes. Returns an array of nodes.
const INLINE = new RegExp([
  /\\([\\`*_{}[\]()#+\-.!|~<>])/.source,                                   // 1 escape
  /(`+)([^`]|[^`][\s\S]*?[^`])\2(?!`)/.source,                            // 2,3 code
  /\[((?:\\.|[^\\\]])+)\]\(\s*<?([^\s()<>]+(?:\([^\s()]*\)[^\s()<>]*)*)>?(?:\s+"[^"]*")?\s*\)/.source, // 4,5 link
  /(https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}*_~])/.source,              // 6 bare URL
  /\*\*\*(?=\S)([\s\S]*?\S)\*\*\*/.source,                             // 7 bold italic
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source,                                   // 8 bold
  /(?<![\w_])__(?=\S)([\s\S]*?\S)__(?![\w_])/.source,                    // 9 bold
  /~~(?=\S)([\s\S]*?\S)~~/.source,                                       // 10 strike
  /\*(?=[^\s*])([^*]*?[^\s*]|[^\s*])\*(?!\*)/.source,                  // 11 italic
  /(?<![\w_])_(?=[^\s_])([\s\S]*?[^\s_]|[^\s_])_(?![\w_])/.source,        // 12 italic
].join("|"), "g");

function inline(text, inLink) {
  const out = [];
  let last = 0;
  INLINE.lastIndex = 0;
  const matches = [...text.matchAll(INLINE)];
  for (const m of matches) {
    if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[1] !== undefined) {
      out.push(document.createTextNode(m[1]));
    } else if (m[2] !== undefined) {
      let code = m[3];
      if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
      out.push(el("code", "", code));
    } else if (m[4] !== undefined) {
      const url = safeUrl(m[5]);
      const label = inline(m[4], true);
      if (url && !inLink) out.push(link(url, label));
      else out.push(document.createTextNode("["), ...label, document.createTextNode("](" + m[5] + ")"));
    } else if (m[6] !== undefined) {
      const url = safeUrl(m[6]);
      if (url && !inLink) out.push(link(url, [document.createTextNode(m[6])]));
      else out.push(document.createTextNode(m[6]));
    } else if (m[7] !== undefined) {
      const strong = el("strong");
      const em = el("em");
      em.append(...inline(m[7], inLink));
      strong.append(em);
      out.push(strong);
    } else if (m[8] !== undefined || m[9] !== undefined) {
      const strong = el("strong");
      strong.append(...inline(m[8] ?? m[9], inLink));
      out.push(strong);
    } else if (m[10] !== undefined) {
      const del = el("del");
      del.append(...inline(m[10], inLink));
      out.push(del);
    } else {
      const em = el("em");
      em.append(...inline(m[11] ?? m[12], inLink));
      out.push(em);
    }
  }
  if (last < text.length) out.push(document.createTextNode(text.slice(last)));
  return out;
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
const TABLE_SEP = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

function indentOf(line) {
  return line.length - line.trimStart().length;
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  const cells = [];
  let cell = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && s[i + 1] === "|") { cell += "|"; i++; continue; }
    if (s[i] === "|") { cells.push(cell.trim()); cell = ""; continue; }
    cell += s[i];
  }
  cells.push(cell.trim());
  return cells;
}

function isTableStart(lines, i) {
  return lines[i].includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")
    && (lines[i + 1].includes("|") || splitRow(lines[i]).length === 1);
}

function startsBlock(lines, i) {
  const line = lines[i];
  const item = ITEM.exec(line);
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || isTableStart(lines, i)
    || Boolean(item && item[3] !== undefined && (!/\d/.test(item[2]) || parseInt(item[2], 10) === 1));
}

function table(lines, i, out) {
  const head = splitRow(lines[i]);
  const aligns = splitRow(lines[i + 1]).map((c) =>
    c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "");
  const wrap = el("div", "table-wrap");
  const tableEl = el("table");
  const row = (cells, tag) => {
    const tr = el("tr");
    head.forEach((_, k) => {
      const cell = el(tag, aligns[k] ? "align-" + aligns[k] : "");
      cell.append(...inline(cells[k] ?? "", false));
      tr.append(cell);
    });
    return tr;
  };
  const thead = el("thead");
  thead.append(row(head, "th"));
  tableEl.append(thead);
  const tbody = el("tbody");
  i += 2;
  while (i < lines.length && lines[i].trim() !== "" && lines[i].includes("|") && !FENCE.test(lines[i])) {
    tbody.append(row(splitRow(lines[i]), "td"));
    i++;
  }
  if (tbody.childElementCount) tableEl.append(tbody);
  wrap.append(tableEl);
  out.push(wrap);
  return i;
}

function list(lines, i, out) {
  const first = ITEM.exec(lines[i]);
  const base = first[1].length;
  const ordered = /\d/.test(first[2]);
  const listEl = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) listEl.start = parseInt(first[2], 10);
  let item = null;
  let loose = false;
  const items = [];
  while (i < lines.length) {
    const line = lines[i];
    const m = ITEM.exec(line);
    if (m && m[1].length >= base && (item === null || m[1].length < item.nested) && !RULE.test(line)) {
      if (/\d/.test(m[2]) !== ordered) break;
      const content = m[3] ?? "";
      const pad = content ? line.indexOf(content, m[1].length + m[2].length) : m[1].length + m[2].length + 1;
      item = { lines: [content], indent: pad, nested: Math.min(pad, m[1].length + 2) };
      items.push(item);
      i++;
      continue;
    }
    if (line.trim() === "") {
      let j = i + 1;
      while (j < lines.length && lines[j].trim() === "") j++;
      if (j >= lines.length) break;
      const next = ITEM.exec(lines[j]);
      const deeper = indentOf(lines[j]) >= item.nested;
      const sibling = next && next[1].length >= base && next[1].length < item.nested && /\d/.test(next[2]) === ordered;
      if (!deeper && !sibling) break;
      loose = true;
      for (; i < j; i++) item.lines.push("");
      continue;
    }
    if (indentOf(line) >= item.nested) {
      item.lines.push(line.slice(Math.min(indentOf(line), item.indent)));
      i++;
      continue;
    }
    // A lazy continuation line of the item's paragraph.
    if (indentOf(line) > base || (!startsBlock(lines, i) && item.lines[item.lines.length - 1].trim() !== "")) {
      item.lines.push(line.trimStart());
      i++;
      continue;
    }
    break;
  }
  for (const it of items) {
    const li = el("li");
    const task = /^\[([ xX])\][ \t]+/.exec(it.lines[0]);
    if (task) {
      it.lines[0] = it.lines[0].slice(task[0].length);
      li.className = "task";
      li.append(el("span", "box", task[1] === " " ? "☐ " : "☑ "));
    }
    for (const node of blocks(it.lines)) {
      if (!loose && node.tagName === "P") li.append(...node.childNodes);
      else li.append(node);
    }
    listEl.append(li);
  }
  out.push(listEl);
  return i;
}

function codeBlock(lang, code) {
  const box = el("div", "code");
  const head = el("div", "code-head");
  head.append(el("span", "", lang || "code"));
  const copy = el("button", "copy-code", "Copy");
  copy.type = "button";
  copy.addEventListener("click", () => copyText(code, copy));
  head.append(copy);
  const pre = el("pre");
  pre.append(el("code", lang ? "language-" + lang.replace(/[^\w+-]/g, "") : "", code));
  box.append(head, pre);
  return box;
}

function blocks(lines) {
  const out = [];
  let para = [];
  const flush = () => {
    if (!para.length) return;
    const p = el("p");
    para.forEach((line, k) => {
      if (k) p.append(el("br"));
      p.append(...inline(line.trim(), false));
    });
    out.push(p);
    para = [];
  };
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") { flush(); i++; continue; }
    let m;
    if ((m = FENCE.exec(line))) {
      flush();
      const fence = m[1];
      const indent = indentOf(line);
      const code = [];
      i++;
      while (i < lines.length) {
        const t = lines[i].trim();
        if (t.startsWith(fence[0].repeat(fence.length)) && /^([`~])\1*$/.test(t) && indentOf(lines[i]) < 4) { i++; break; }
        code.push(lines[i].slice(Math.min(indent, indentOf(lines[i]))));
        i++;
      }
      out.push(codeBlock(m[2], code.join("\n")));
      continue;
    }
    if ((m = HEADING.exec(line))) {
      flush();
      const h = el("h" + m[1].length);
      h.append(...inline(m[2] || "", false));
      out.push(h);
      i++;
      continue;
    }
    if (RULE.test(line)) { flush(); out.push(el("hr")); i++; continue; }
    if (isTableStart(lines, i)) { flush(); i = table(lines, i, out); continue; }
    if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) { quoted.push(m[1]); i++; }
      const q = el("blockquote");
      q.append(...blocks(quoted));
      out.push(q);
      continue;
    }
    if ((m = ITEM.exec(line)) && (!para.length || (m[3] !== undefined && (!/\d/.test(m[2]) || parseInt(m[2], 10) === 1)))) {
      flush();
      i = list(lines, i, out);
      continue;
    }
    para.push(line);
    i++;
  }
  flush();
  return out;
}

// Markdown text to a DocumentFragment (never through HTML parsing).
function markdown(text) {
  const frag = document.createDocumentFragment();
  frag.append(...blocks(String(text).replace(/\r\n?/g, "\n").split("\n")));
  return frag;
}
