"""The playground page (`GET /`) in a real browser: Debian's chromium driven by
`playwright-core` (the Node script below, run once for the module; each test reads its own
steps from the script's report). Desktop (1280 px) and phone (360/390/430 px) widths without
horizontal scrolling, the parameters drawer on a phone, dark mode, Markdown answers, hostile
text shown as text, streamed answers and their stats, Stop (the server logs the cancelled
request as 499), regenerate, edit-and-resend, conversations kept across a reload, the
server's defaults in the panel, the server-down and model-loading states. Skips where
chromium or node is absent.

`LLAMA32_PLAYGROUND_URL=http://127.0.0.1:PORT/` runs the browser checks against another
server instead of starting one (e.g. a proxy serving the working tree's page in front of a
running server; the server-log check is then skipped). `LLAMA32_PLAYGROUND_SHOTS=DIR` keeps
the screenshots (desktop-light, desktop-dark, phone-light, phone-dark, phone-params)."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from test_openai_client import Server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

SCRIPT = r"""// The playground in Chromium (playwright-core). Usage: node playground_checks.mjs URL SHOTS_DIR
// Prints one JSON object: {steps: {name: {ok, error?, ...}}, page_errors: [...]}.
import { chromium } from "playwright-core";

const [url, outdir] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const steps = {};
const pageErrors = [];
const check = (ok, what) => { if (!ok) throw new Error("failed: " + what); };
async function step(name, body) {
  const t0 = Date.now();
  const info = {};
  try {
    await body(info);
    steps[name] = { ok: true, ...info };
  } catch (e) {
    steps[name] = { ok: false, ...info, error: String(e.stack || e).slice(0, 2000) };
  }
  steps[name].seconds = (Date.now() - t0) / 1000;
}

const MARKDOWN = [
  "# Plan",
  "Some **bold** and *italic* text with `inline <b>code</b>`, a [link](https://example.com/docs?a=1&b=2),",
  "a [bad link](javascript:window.__pwned=9) and <script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">.",
  "",
  "| Model | Params | Context |",
  "|:------|-------:|:-------:|",
  "| Llama 3.2 1B | 1.24 B | 131072 |",
  "| Llama 3.2 3B | 3.21 B | 131072 |",
  "",
  "1. first",
  "2. second",
  "   - nested one",
  "   - nested two",
  "",
  "- a bullet with a https://example.org/a_very_long_url_that_goes/on_and_on_and_on_and_on_and_on_and_on_and_on link",
  "",
  "```python",
  "def long_line(): return 'a line of code far longer than any phone screen is wide, to scroll inside its block'",
  "```",
].join("\n");

function conversation(id, title, user, answer) {
  return { id, title, created: 1, updated: Date.now(), messages: [
    { role: "user", content: user },
    { role: "assistant", content: answer, stats: "42 tokens · TTFT 0.10 s · 55.0 tok/s · finish: stop" },
  ] };
}
const STORED = {
  current: "md",
  chats: [
    conversation("md", "Markdown, please", "Show me some Markdown, please", MARKDOWN),
    conversation("other", "Another chat", "Hello there", "General Kenobi."),
  ],
};

const ready = (page) => page.waitForFunction(() => document.getElementById("model").textContent.includes("context"),
  null, { timeout: 20000 });
const overflow = (page) => page.evaluate(() => ({
  scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
  bodyScroll: document.body.scrollWidth,
}));
const lastAnswerDone = (page, n) => page.waitForFunction((n) => {
  const answers = document.querySelectorAll(".msg.assistant");
  return answers.length === n && !document.getElementById("send").disabled
    && /finish: /.test(answers[n - 1].querySelector(".stats").textContent);
}, n, { timeout: 20000 });

async function newPage(options) {
  const context = await browser.newContext(options);
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) pageErrors.push("CSP: " + m.text());
  });
  const requests = [];
  page.on("request", (r) => {
    if (r.url().endsWith("/v1/chat/completions") && r.method() === "POST") requests.push(JSON.parse(r.postData()));
  });
  return { context, page, requests };
}

async function withStored(page, stored) {
  await page.goto(url);
  await page.evaluate((s) => localStorage.setItem("llama32.playground.chats", JSON.stringify(s)), stored);
  await page.reload();
  await ready(page);
}

try {
  // ---- Desktop, light, against the real model.
  const desk = await newPage({ viewport: { width: 1280, height: 800 } });
  const page = desk.page;
  await page.goto(url);
  await ready(page);
  if (!(await page.evaluate(() => typeof window.llama32 === "object"))) {
    throw new Error("this server's page has no window.llama32: a build from before the new playground?");
  }
  const EXAMPLE = await page.textContent(".example >> nth=0");

  await step("defaults", async (info) => {
    const models = await page.evaluate(async () => (await (await fetch("/v1/models")).json()).data[0]);
    const d = models.sampling_defaults;
    info.defaults = d;
    for (const name of ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"]) {
      const hint = await page.textContent(`#params .default[data-for=${name}]`);
      check(hint.includes("default: " + d[name]), `${name} hint "${hint}" shows ${d[name]}`);
      check((await page.getAttribute("#p-" + name, "placeholder")) === String(d[name]), name + " placeholder");
    }
    check((await page.textContent("#params .default[data-for=max_tokens]")).includes(String(models.max_model_len)), "context shown");
    check(!(await page.textContent("#params")).includes("model default"), "no 'model default'");
    info.model = await page.textContent("#model");
  });

  await step("desktop_layout", async (info) => {
    info.overflow = await overflow(page);
    check(info.overflow.scrollWidth <= info.overflow.innerWidth, "no horizontal overflow at 1280");
    check(await page.isVisible("#params") && await page.isVisible("#chats"), "both panels shown at 1280");
    await page.click("#settings-toggle");
    check(!(await page.isVisible("#params")), "the toggle hides the panel");
    await page.click("#settings-toggle");
    check(await page.isVisible("#params"), "and shows it again");
  });

  await step("stream_and_stats", async (info) => {
    await page.fill("#p-max_tokens", "8");
    await page.fill("#p-temperature", "1");
    await page.click(".example >> nth=0");
    await lastAnswerDone(page, 1);
    info.stats = await page.textContent(".msg.assistant .stats");
    info.answer = await page.textContent(".msg.assistant .body");
    check(/^\d+ tokens · TTFT [\d.]+ s · /.test(info.stats) && /finish: (length|stop)/.test(info.stats), "stats line");
    check(!(await page.isVisible("#examples")), "examples hidden once the chat starts");
    const line = (s) => page.evaluate((s) => window.llama32.statsLine(s), s);
    // Three tokens read in the same half millisecond: no rate rather than thousands of tok/s.
    info.bunched = await line({ start: 0, first: 100, last: 100.5, tokens: 3, finish: "stop" });
    check(!info.bunched.includes("tok/s"), "no rate from a burst: " + info.bunched);
    // 11 tokens, 1 s after the first one: 10 decode tokens per second (not 11, not over the TTFT).
    info.decode = await line({ start: 0, first: 2000, last: 3000, tokens: 11, finish: "length" });
    check(info.decode === "11 tokens · TTFT 2.00 s · 10.0 tok/s · finish: length", info.decode);
  });

  await step("regenerate", async (info) => {
    const storedAnswer = () => page.evaluate(() => {
      const s = JSON.parse(localStorage.getItem("llama32.playground.chats"));
      const c = s.chats.find((x) => x.id === s.current);
      return { n: c.messages.length, answer: c.messages[c.messages.length - 1].content };
    });
    const old = await storedAnswer();
    const sent = desk.requests.length;
    await page.click(".msg.assistant .regenerate");
    await page.waitForFunction((n) => document.querySelectorAll(".msg.assistant").length === 1
      && !document.getElementById("send").disabled, null, { timeout: 20000 });
    await lastAnswerDone(page, 1);
    check(desk.requests.length === sent + 1, "one new request");
    const body = desk.requests[sent];
    info.sent_messages = body.messages;
    check(body.messages.length === 1 && body.messages[0].content === EXAMPLE, "regenerate sends the history without the old answer");
    check((await page.locator(".msg").count()) === 2, "still one question and one answer");
    // The stored text is the raw answer; the page shows it rendered as Markdown (a random
    // model's `||` or CRLF render differently), so compare what is stored, old and new.
    const now = await storedAnswer();
    info.answer_before = old.answer;
    info.answer_after = now.answer;
    check(now.n === 2 && now.answer !== old.answer && now.answer.length > 0, "stored answer is the new one");
  });

  await step("edit_and_resend", async (info) => {
    const sent = desk.requests.length;
    await page.click(".msg.user .edit");
    await page.fill(".msg.user .editor", "Hello again");
    await page.click(".msg.user .save-edit");
    await lastAnswerDone(page, 1);
    check(desk.requests.length === sent + 1, "one new request");
    info.sent_messages = desk.requests[sent].messages;
    check(info.sent_messages.length === 1 && info.sent_messages[0].content === "Hello again", "edited message sent alone");
    check((await page.textContent(".msg.user .body")) === "Hello again", "edited message shown");
    check((await page.locator(".msg").count()) === 2, "one question and one answer");
  });

  await step("reload_keeps_conversation", async (info) => {
    const answer = await page.textContent(".msg.assistant .body");
    await page.reload();
    await ready(page);
    check((await page.textContent(".msg.user .body")) === "Hello again", "question kept");
    check((await page.textContent(".msg.assistant .body")) === answer, "answer kept");
    info.stats = await page.textContent(".msg.assistant .stats");
    check(info.stats.includes("tokens"), "stats kept");
    check((await page.inputValue("#p-max_tokens")) === "8", "parameters kept");
  });

  await step("conversations", async (info) => {
    await page.click("#new-chat");
    check((await page.locator(".msg").count()) === 0 && await page.isVisible("#examples"), "new chat is empty");
    await page.fill("#input", "Second chat");
    await page.press("#input", "Enter");
    await lastAnswerDone(page, 1);
    check((await page.locator("#chat-list li").count()) === 2, "two chats listed");
    await page.click("#chat-list li:has-text('Hello again') .open-chat");
    check((await page.textContent(".msg.user .body")) === "Hello again", "switched to the first chat");
    await page.reload();
    await ready(page);
    check((await page.textContent(".msg.user .body")) === "Hello again", "the current chat is kept over a reload");
    await page.hover("#chat-list li:has-text('Second chat')");
    await page.click("#chat-list li:has-text('Second chat') .delete-chat");
    await page.click("#chat-list li:has-text('Second chat') .delete-chat");
    check((await page.locator("#chat-list li").count()) === 1, "deleted");
    check((await page.textContent(".msg.user .body")) === "Hello again", "the current chat stays");
    await page.click("#chat-list li .delete-chat");
    await page.click("#chat-list li .delete-chat");
    check((await page.locator("#chat-list li").count()) === 0 && (await page.locator(".msg").count()) === 0, "deleting the current chat empties the page");
  });

  await step("bad_parameter", async (info) => {
    await page.fill("#p-temperature", "-1");
    await page.fill("#input", "Hi");
    await page.click("#send");
    await page.waitForSelector("#error:not([hidden])");
    info.shown = await page.textContent("#error");
    check(info.shown.includes("temperature"), "error names the parameter");
    check((await page.inputValue("#input")) === "Hi", "the message is given back");
    check((await page.locator(".msg").count()) === 0, "no unanswered message left");
    await page.fill("#p-temperature", "1");
    await page.fill("#input", "");
  });

  await step("stop", async (info) => {
    // The random model may end an answer early by drawing an end-of-turn token: then ask again.
    await page.fill("#p-max_tokens", "100000");
    for (let attempt = 0; attempt < 6 && !info.stats; attempt++) {
      const n = await page.locator(".msg.assistant").count();
      await page.fill("#input", "Tell me a very long story");
      await page.press("#input", "Enter");
      await page.waitForFunction((n) => {
        const bodies = document.querySelectorAll(".msg.assistant .body");
        return bodies.length === n + 1 && (bodies[n].textContent.length > 200 || document.getElementById("stop").disabled);
      }, n, { timeout: 20000 });
      if (await page.isDisabled("#stop")) continue;
      await page.click("#stop", { timeout: 2000 }).catch(() => {});
      await page.waitForFunction(() => !document.getElementById("send").disabled);
      const stats = await page.textContent(`.msg.assistant >> nth=${n} >> .stats`);
      if (stats.includes("finish: stopped")) info.stats = stats;
    }
    check(Boolean(info.stats), "an answer stopped with Stop");
    await page.fill("#p-max_tokens", "8");
  });

  await step("hostile_stream", async (info) => {
    await page.click("#new-chat");
    const payload = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> `<b>x</b>` [x](javascript:window.__pwned=3)";
    await page.route("**/v1/chat/completions", async (route) => {
      const chunk = (content) => "data: " + JSON.stringify({ choices: [{ index: 0, delta: { content }, finish_reason: null }] }) + "\n\n";
      const last = "data: " + JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }) + "\n\n";
      await route.fulfill({ status: 200, contentType: "text/event-stream",
        body: chunk(payload) + chunk("\n```html\n<img src=y onerror=\"window.__pwned=4\">\n```") + last + "data: [DONE]\n\n" });
    });
    await page.fill("#input", payload);
    await page.press("#input", "Enter");
    await lastAnswerDone(page, 1);
    await page.waitForTimeout(200);
    await page.unroute("**/v1/chat/completions");
    info.pwned = await page.evaluate(() => window.__pwned ?? null);
    info.injected = await page.evaluate(() => document.querySelectorAll(".msg img, .msg script, .msg b, .msg a").length);
    const text = await page.textContent(".msg.assistant .body");
    check(info.pwned === null && info.injected === 0, "nothing injected");
    check(text.includes("<script>window.__pwned=1</script>"), "script shown as text");
    check((await page.textContent(".msg.user .body")) === payload, "the user's text shown as typed");
    check((await page.locator(".msg.assistant pre code").count()) === 1, "code block");
  });

  await step("markdown", async (info) => {
    await withStored(page, STORED);
    const body = page.locator(".msg.assistant .body");
    check((await body.locator("strong").textContent()) === "bold", "bold");
    check((await body.locator("em").textContent()) === "italic", "italic");
    check((await body.locator("h1").textContent()) === "Plan", "heading");
    check((await body.locator("p code").textContent()) === "inline <b>code</b>", "inline code as text");
    check((await body.locator("table th").allTextContents()).join("|") === "Model|Params|Context", "table head");
    check((await body.locator("table tbody tr").count()) === 2, "table rows");
    check((await body.locator("table td").nth(1).textContent()) === "1.24 B", "table cell");
    check((await body.locator("table td").nth(1).getAttribute("class")) === "align-right", "column alignment");
    check((await body.locator("ol > li").count()) === 2 && (await body.locator("ol ul > li").count()) === 2, "nested list");
    check((await body.locator("pre code").textContent()).startsWith("def long_line()"), "fenced code");
    const links = await body.locator("a").evaluateAll((as) => as.map((a) => [a.href, a.target, a.rel, a.textContent]));
    info.links = links;
    check(links.length === 2 && links[0][0] === "https://example.com/docs?a=1&b=2" && links[0][1] === "_blank"
      && links[0][2].includes("noopener") && links[1][0].startsWith("https://example.org/"), "http(s) links only, new tab, noopener");
    const text = await body.textContent();
    check(text.includes("<script>window.__pwned=1</script>") && text.includes("[bad link](javascript:"), "HTML and javascript: links as text");
    check(await page.evaluate(() => document.querySelectorAll(".msg script, .msg img").length === 0 && window.__pwned === undefined), "nothing ran");
    info.overflow = await overflow(page);
    check(info.overflow.scrollWidth <= info.overflow.innerWidth, "no overflow with a wide table and code");
    await desk.context.grantPermissions(["clipboard-read", "clipboard-write"]);
    await page.click(".msg.assistant .actions .copy");
    await page.waitForSelector(".msg.assistant .actions .copy:has-text('Copied')");
    check((await page.evaluate(() => navigator.clipboard.readText())) === MARKDOWN, "Copy gives the answer's Markdown");
    await page.screenshot({ path: outdir + "/desktop-light.png" });
  });

  await step("server_down", async (info) => {
    await page.route("**/health", (route) => route.abort("connectionrefused"));
    await page.route("**/v1/models", (route) => route.abort("connectionrefused"));
    await page.reload();
    await page.waitForSelector("#notice:not([hidden])");
    info.notice = await page.textContent("#notice");
    info.status = await page.textContent("#model");
    check(/not reachable/.test(info.notice) && !/failed to fetch/i.test(info.notice + info.status), "says the server is not reachable");
    await page.route("**/v1/chat/completions", (route) => route.abort("connectionrefused"));
    await page.fill("#input", "anyone there?");
    await page.press("#input", "Enter");
    await page.waitForSelector("#error:not([hidden])");
    info.shown = await page.textContent("#error");
    check(/not reachable/.test(info.shown) && !/failed to fetch/i.test(info.shown), "a send says so too");
    check((await page.inputValue("#input")) === "anyone there?", "the message is given back");
    await page.unrouteAll();
    await ready(page);
    check(await page.isHidden("#notice"), "recovers by itself");
    await page.fill("#input", "");
  });

  await step("loading", async (info) => {
    let calls = 0;
    await page.route("**/health", (route) => {
      calls += 1;
      return route.fulfill({ status: 503, contentType: "application/json", body: "{\"status\":\"loading\"}" });
    });
    await page.reload();
    await page.waitForSelector("#notice:not([hidden])");
    info.notice = await page.textContent("#notice");
    info.status = await page.textContent("#model");
    check(/loading/i.test(info.notice) && /loading/i.test(info.status), "says the model is loading");
    await page.waitForFunction(() => true, null, { timeout: 100 });
    await page.waitForTimeout(1300);
    check(calls >= 2, "and asks again");
    await page.unrouteAll();
    await ready(page);
    check(await page.isHidden("#notice"), "ready once loaded");
  });
  await desk.context.close();

  // ---- Dark mode, desktop.
  await step("dark_mode", async (info) => {
    const dark = await newPage({ viewport: { width: 1280, height: 800 }, colorScheme: "dark" });
    await withStored(dark.page, STORED);
    const bg = await dark.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const panel = await dark.page.evaluate(() => getComputedStyle(document.querySelector(".msg.assistant")).backgroundColor);
    const fg = await dark.page.evaluate(() => getComputedStyle(document.body).color);
    const lum = (c) => { const [r, g, b] = c.match(/\d+/g).map(Number); return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; };
    info.colors = { bg, panel, fg };
    check(lum(bg) < 0.2 && lum(panel) < 0.25 && lum(fg) > 0.7, "dark background, light text");
    await dark.page.screenshot({ path: outdir + "/desktop-dark.png" });
    await dark.context.close();
    const light = await newPage({ viewport: { width: 400, height: 300 }, colorScheme: "light" });
    await light.page.goto(url);
    const lightBg = await light.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    check(lum(lightBg) > 0.8, "light background in light mode");
    await light.context.close();
  });

  // ---- Phones.
  await step("phone_layout", async (info) => {
    const phone = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    const p = phone.page;
    await withStored(p, STORED);
    info.widths = {};
    for (const width of [360, 390, 430]) {
      await p.setViewportSize({ width, height: 844 });
      const o = await overflow(p);
      info.widths[width] = o;
      check(o.scrollWidth <= o.innerWidth, `no horizontal overflow at ${width}: ${JSON.stringify(o)}`);
      check(await p.isVisible("#settings-toggle") && await p.isVisible("#chats-toggle"), "toggles shown at " + width);
    }
    await p.setViewportSize({ width: 390, height: 844 });
    await p.screenshot({ path: outdir + "/phone-light.png" });
    check(!(await p.isVisible("#params")) && !(await p.isVisible("#chats")), "panels folded");
    await p.click("#chats-toggle");
    check(await p.isVisible("#chats"), "chats drawer opens");
    await p.click("#chat-list li:has-text('Another chat') .open-chat");
    check(!(await p.isVisible("#chats")), "and closes on a choice");
    check((await p.textContent(".msg.assistant .body")) === "General Kenobi.", "switched");
    await phone.context.close();
  });

  await step("phone_parameters", async (info) => {
    const phone = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    const p = phone.page;
    await p.goto(url);
    await ready(p);
    check(!(await p.isVisible("#params")), "panel folded at 390");
    await p.click("#settings-toggle");
    check(await p.isVisible("#params"), "panel opens");
    const box = await p.locator("#params").boundingBox();
    info.box = box;
    check(box.x >= 0 && box.x + box.width <= 390, "panel within the screen");
    for (const id of ["#p-temperature", "#p-max_tokens", "#reset-params"]) {
      await p.locator(id).scrollIntoViewIfNeeded();
      const b = await p.locator(id).boundingBox();
      check(b && b.x >= 0 && b.x + b.width <= 390 && b.y >= 0 && b.y + b.height <= 844, id + " reachable");
    }
    await p.fill("#p-temperature", "0.3");
    await p.fill("#p-max_tokens", "5");
    await p.locator("#p-system").scrollIntoViewIfNeeded();
    await p.screenshot({ path: outdir + "/phone-params.png" });
    const o = await overflow(p);
    check(o.scrollWidth <= o.innerWidth, "no overflow with the panel open");
    await p.click("#settings-toggle");
    check(!(await p.isVisible("#params")), "panel closes");
    await p.fill("#input", "Hi from a phone");
    await p.press("#input", "Enter");
    await lastAnswerDone(p, 1);
    const sent = phone.requests[phone.requests.length - 1];
    check(sent.temperature === 0.3 && sent.max_tokens === 5, "the phone's parameters are used");
    await p.reload();
    await ready(p);
    check((await p.inputValue("#p-temperature")) === "0.3", "and kept");
    await phone.context.close();
  });

  await step("phone_dark", async () => {
    const phone = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2, colorScheme: "dark" });
    await withStored(phone.page, STORED);
    const o = await overflow(phone.page);
    check(o.scrollWidth <= o.innerWidth, "no overflow");
    await phone.page.screenshot({ path: outdir + "/phone-dark.png" });
    await phone.context.close();
  });
} catch (e) {
  steps.setup = { ok: false, error: String(e.stack || e) };
} finally {
  console.log(JSON.stringify({ steps, page_errors: pageErrors }));
  await browser.close();
}
"""


@pytest.fixture(scope="module")
def run(node_dir, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium absent")
    other = os.environ.get("LLAMA32_PLAYGROUND_URL")
    server = None if other else Server()
    try:
        script = node_dir / "playground_checks.mjs"
        script.write_text(SCRIPT)
        shots = Path(os.environ.get("LLAMA32_PLAYGROUND_SHOTS") or tmp_path_factory.mktemp("shots"))
        shots.mkdir(parents=True, exist_ok=True)
        url = other or server.url + "/"
        out = subprocess.run(["node", str(script), url, str(shots)], capture_output=True, text=True, timeout=240,
                             env={**os.environ, "CHROMIUM": CHROMIUM})
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout)
        result["shots"] = shots
        result["server"] = server
        if server is not None:
            deadline = time.time() + 10
            while not any(" 499 " in line for line in server.log) and time.time() < deadline:
                time.sleep(0.1)
            result["health"] = server.health()
        yield result
    finally:
        if server is not None:
            server.stop()


def passed(run, *names):
    setup = run["steps"].get("setup")
    assert setup is None, setup["error"]
    for name in names:
        step = run["steps"].get(name)
        assert step is not None, f"step {name} did not run"
        assert step["ok"], f"{name}: {step['error']}\n{json.dumps(step, indent=1)[:3000]}"
    return [run["steps"][n] for n in names]


def test_layout_fits_desktop_and_phone_widths(run):
    desktop, phone = passed(run, "desktop_layout", "phone_layout")
    assert desktop["overflow"]["scrollWidth"] <= 1280
    for width, o in phone["widths"].items():
        assert o["scrollWidth"] <= int(width), (width, o)
    for name in ["desktop-light", "phone-light"]:
        assert (run["shots"] / f"{name}.png").stat().st_size > 10_000


def test_parameters_reachable_and_changeable_on_a_phone(run):
    (step,) = passed(run, "phone_parameters")
    assert step["box"]["x"] >= 0 and step["box"]["x"] + step["box"]["width"] <= 390


def test_dark_mode_follows_the_system(run):
    passed(run, "dark_mode", "phone_dark")
    for name in ["desktop-dark", "phone-dark"]:
        assert (run["shots"] / f"{name}.png").stat().st_size > 10_000


def test_markdown_rendered(run):
    (step,) = passed(run, "markdown")
    assert len(step["links"]) == 2


def test_hostile_answer_shown_as_text(run):
    (step,) = passed(run, "hostile_stream")
    assert step["pwned"] is None and step["injected"] == 0


def test_streamed_answer_and_decode_rate(run):
    (step,) = passed(run, "stream_and_stats")
    assert "tok/s" not in step["bunched"]
    assert "10.0 tok/s" in step["decode"]


def test_server_defaults_shown(run):
    (step,) = passed(run, "defaults")
    assert "context" in step["model"]


def test_regenerate_replaces_the_last_answer(run):
    passed(run, "regenerate")


def test_edit_and_resend(run):
    passed(run, "edit_and_resend")


def test_conversations_kept_across_a_reload(run):
    passed(run, "reload_keeps_conversation", "conversations")


def test_bad_parameter_shows_the_server_message(run):
    (step,) = passed(run, "bad_parameter")
    assert "temperature" in step["shown"]


def test_stop_cancels_the_generation(run):
    passed(run, "stop")
    server = run["server"]
    if server is None:
        pytest.skip("LLAMA32_PLAYGROUND_URL: no server log to read")
    assert any("POST /v1/chat/completions 499" in line for line in server.log), "".join(server.log)
    assert run["health"]["running"] == 0


def test_server_down_and_loading_states(run):
    down, loading = passed(run, "server_down", "loading")
    assert "not reachable" in down["notice"] and "not reachable" in down["shown"]
    assert "loading" in loading["notice"].lower()


def test_no_page_errors_or_policy_violations(run):
    passed(run)
    assert run["page_errors"] == []


def test_no_playground_flag():
    server = Server("--no-playground")
    try:
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "/", timeout=10)
        assert e.value.code == 404
    finally:
        server.stop()
