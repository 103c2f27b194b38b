// The playground page in a real browser (Debian's chromium through playwright-core).
// Usage: node playground.mjs URL SCREENSHOT.png   (prints a JSON summary; exits 1 on failure)
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const result = {};
const check = (ok, what) => { if (!ok) throw new Error("failed: " + what); };
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("model").textContent.includes("context"));
  result.model = await page.textContent("#model");

  // An example prompt, streamed into the answer area, with the stats line filled in.
  await page.fill("#p-max_tokens", "12");
  await page.fill("#p-temperature", "0");
  await page.click(".example >> nth=0");
  await page.waitForSelector(".msg.assistant .stats:has-text('finish: length')");
  result.first_answer = await page.textContent(".msg.assistant .body");
  result.first_stats = await page.textContent(".msg.assistant .stats");
  check(result.first_answer.length > 0, "streamed text");
  check(!(await page.isVisible("#examples")), "examples hidden once the chat starts");
  check(!(await page.isVisible("#key-row")), "no key field without --api-key");
  check(/12 tokens · TTFT [\d.]+ s · [\d.]+ tok\/s/.test(result.first_stats), "stats line");

  // A long answer: screenshot mid-answer, then Stop ends the request. The random model
  // may end an answer early by drawing an end-of-turn token: then ask again.
  await page.fill("#p-max_tokens", "100000");
  await page.fill("#p-temperature", "1");
  let stoppedAt = -1;
  for (let attempt = 0; attempt < 6 && stoppedAt < 0; attempt++) {
    const index = await page.locator(".msg.assistant").count();
    await page.fill("#input", "Tell me a very long story");
    await page.press("#input", "Enter");
    await page.waitForFunction((n) => {
      const bodies = document.querySelectorAll(".msg.assistant .body");
      return bodies.length === n + 1 && (bodies[n].textContent.length > 200 || document.getElementById("stop").disabled);
    }, index);
    if (await page.isDisabled("#stop")) continue;
    await page.screenshot({ path: shot });
    await page.click("#stop", { timeout: 2000 }).catch(() => {});
    await page.waitForFunction(() => !document.getElementById("send").disabled);
    const stats = await page.textContent(`.msg.assistant >> nth=${index} >> .stats`);
    if (stats.includes("finish: stopped")) {
      stoppedAt = index;
      result.stopped_stats = stats;
    }
  }
  check(stoppedAt >= 0, "an answer stopped with Stop");
  check(!(await page.isDisabled("#send")), "send enabled after stop");

  // An out-of-range value: the server's 400 message is shown, the message stays editable.
  await page.fill("#p-temperature", "-1");
  await page.fill("#input", "Hi");
  await page.click("#send");
  await page.waitForSelector("#error:not([hidden])");
  result.error = await page.textContent("#error");
  check(result.error.includes("temperature"), "error names the parameter");
  check((await page.inputValue("#input")) === "Hi", "the message is kept");

  // Parameters survive a reload.
  await page.reload();
  await page.waitForFunction(() => document.getElementById("model").textContent.includes("context"));
  result.kept_temperature = await page.inputValue("#p-temperature");
  result.kept_max_tokens = await page.inputValue("#p-max_tokens");
  check(result.kept_temperature === "-1" && result.kept_max_tokens === "100000", "parameters kept");
  await page.click("#reset-params");

  // Hostile text from the user and from the model is shown as text, never run.
  const payload = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> `<b>x</b>`";
  await page.route("**/v1/chat/completions", async (route) => {
    const chunk = (content) => "data: " + JSON.stringify({ choices: [{ index: 0, delta: { content }, finish_reason: null }] }) + "\n\n";
    const last = "data: " + JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }) + "\n\n";
    await route.fulfill({ status: 200, contentType: "text/event-stream",
      body: chunk(payload) + chunk("\n```html\n<img src=y onerror=\"window.__pwned=3\">\n```") + last + "data: [DONE]\n\n" });
  });
  await page.fill("#input", payload);
  await page.press("#input", "Enter");
  await page.waitForSelector(".msg.assistant .stats:has-text('finish: stop')");
  await page.waitForTimeout(300);
  result.pwned = await page.evaluate(() => window.__pwned ?? null);
  result.injected_elements = await page.evaluate(() => document.querySelectorAll(".msg img, .msg script, .msg b").length);
  result.shown_as_text = (await page.textContent(".msg.assistant .body")).includes("<script>window.__pwned=1</script>");
  check(result.pwned === null && result.injected_elements === 0 && result.shown_as_text, "no injection");
  check((await page.locator(".msg.assistant pre code").count()) === 1, "code block rendered");

  // Phone width: the panel folds behind a button.
  await page.setViewportSize({ width: 390, height: 800 });
  check(!(await page.isVisible("#params")), "panel folded on a phone");
  await page.click("#settings-toggle");
  check(await page.isVisible("#params"), "panel opens");
  result.page_errors = pageErrors;
  check(pageErrors.length === 0, "no page errors: " + pageErrors.join("; "));
  console.log(JSON.stringify(result));
} catch (e) {
  console.log(JSON.stringify(result));
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
