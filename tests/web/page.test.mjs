// Headless-Chromium test of the page `twigvlm serve` serves at `/`: starts the server, uploads an
// image through the page's file input, asks a question, waits for the streamed answer and the
// heat map, and takes a screenshot.
//
// Usage (from the repository root, after `cargo build --release` and `npm ci --prefix tests/web`):
//   node tests/web/page.test.mjs --binary target/release/twigvlm --model DIR --image PNG \
//        --screenshot OUT.png [--prompt TEXT] [--policy fastv] [--budget 11.1%] [--max-tokens 24] \
//        [--final-wipe LAYER] [--twig DIR] [--chromium /usr/bin/chromium]
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const defaults = { prompt: "Describe the image.", policy: "fastv", budget: "11.1%", "max-tokens": "24", chromium: "/usr/bin/chromium" };
const args = { ...defaults };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, "");
  args[key] = process.argv[i + 1];
}
for (const required of ["binary", "model", "image", "screenshot"]) {
  assert.ok(args[required], `--${required} is required`);
}
// Page actions wait at most this long (the first answer of a CPU model included).
const TIMEOUT_MS = 180_000;

function startServer() {
  const serveArgs = ["serve", "--model", args.model, "--port", "0"];
  if (args.twig) serveArgs.push("--twig", args.twig);
  const server = spawn(args.binary, serveArgs, { stdio: ["ignore", "pipe", "inherit"] });
  const url = new Promise((resolve, reject) => {
    server.on("exit", (code) => reject(new Error(`the server exited with ${code}`)));
    createInterface({ input: server.stdout }).once("line", (line) => resolve(line.replace("listening on ", "").trim()));
  });
  return { server, url };
}

const { server, url } = startServer();
// The flags the machine's closed network needs (no background connections, no sandbox as root).
const browser = await chromium.launch({
  executablePath: args.chromium,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 800 } });
  page.setDefaultTimeout(TIMEOUT_MS);
  await page.goto(await url);
  await page.waitForFunction(() => document.getElementById("model").textContent !== "…");
  await page.setInputFiles("#image", args.image);
  await page.waitForSelector("#preview", { state: "visible" });
  await page.fill("#prompt", args.prompt);
  await page.selectOption("#policy", args.policy);
  await page.fill("#budget", args.budget);
  if (args["final-wipe"]) {
    assert.ok(await page.isEnabled("#final_wipe"), `the FinalWipe field is off under ${args.policy}`);
    await page.fill("#final_wipe", args["final-wipe"]);
  }
  await page.fill("#max_tokens", args["max-tokens"]);
  const chatRequest = page.waitForRequest((request) => request.url().endsWith("/v1/chat/completions"));
  await page.click("#send");
  const sent = (await chatRequest).postDataJSON();
  if (args["final-wipe"]) assert.equal(sent.final_wipe, Number(args["final-wipe"]), "the FinalWipe layer is sent");
  else assert.equal(sent.final_wipe, undefined, "an empty FinalWipe field leaves the model's default");
  await page.waitForFunction(() => {
    const status = document.getElementById("status");
    return status.textContent.startsWith("done") || status.className === "error";
  });
  const status = await page.textContent("#status");
  assert.notEqual(await page.getAttribute("#status", "class"), "error", `the answer failed: ${status}`);
  const answer = await page.textContent("#answer");
  assert.ok(answer.length > 0, "the answer streamed into the page");
  assert.ok(Number(await page.textContent("#tps")) > 0, "tokens/s is shown");
  assert.match(await page.textContent("#tokens"), /^\d+$/, "the token count is shown");
  await page.waitForSelector("#heatmap", { state: "visible" });
  assert.ok(await page.$eval("#heatmap", (img) => img.complete && img.naturalWidth > 0), `the heat map loaded (${status})`);
  await page.screenshot({ path: args.screenshot, fullPage: true });
  console.log(`page test passed: ${answer.length} characters of answer; screenshot in ${args.screenshot}`);
} finally {
  await browser.close();
  server.kill("SIGTERM");
}
