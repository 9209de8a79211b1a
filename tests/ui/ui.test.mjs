// Gate's web UI in headless Chromium, as a first-time user would use it:
// sign in with the login link the daemon prints, add an upstream with a key, see it
// listed with the key hidden, make a chat request through it, change a setting and see it
// come from the runtime layer, see a reload error. A screenshot of each page goes to
// artifacts/<runtime>-<page>.png.
//
// Usage: node ui.test.mjs --runtime tokio|smol   (GATE_BIN: path of the `gate` binary)
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const execFileAsync = promisify(execFile);
const runtime = process.argv[process.argv.indexOf("--runtime") + 1] || "tokio";
const gateBin = process.env.GATE_BIN;
const artifacts = path.join(path.dirname(new URL(import.meta.url).pathname), "artifacts");
const UPSTREAM_KEY = "sk-ui-secret-" + Math.random().toString(36).slice(2) + "-never-shown";
const DEADLINE_MS = 20000;

function fail(message) { throw new Error(`[${runtime}] ${message}`); }
function check(condition, message) { if (!condition) fail(message); }

async function waitFor(what, fn) {
  const start = Date.now();
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() - start > DEADLINE_MS) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// A mock OpenAI-compatible upstream that remembers the keys it was sent.
function startMock() {
  const seenAuth = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      if (req.method === "GET") { // model discovery: none listed here
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ object: "list", data: [] }));
        return;
      }
      seenAuth.push(req.headers.authorization || "");
      let model = "";
      try { model = JSON.parse(body).model; } catch (_) { /* not JSON */ }
      const answer = JSON.stringify({
        id: "chatcmpl-ui", object: "chat.completion", created: 0, model,
        choices: [{ index: 0, finish_reason: "stop", message: { role: "assistant", content: "hello from the mock" } }],
        usage: { prompt_tokens: 1, completion_tokens: 4, total_tokens: 5 },
      });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(answer);
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, seenAuth, port: server.address().port })));
}

function startGate(stateDir, configFile) {
  const env = { ...process.env, RUST_LOG: "info" };
  for (const k of Object.keys(env)) if (k.startsWith("GATE_")) delete env[k];
  const child = spawn(gateBin, ["serve", "--runtime", runtime, "--host", "127.0.0.1", "--port", "0",
    "--state-dir", stateDir, "--config", configFile],
    { env, stdio: ["ignore", "ignore", "pipe"] });
  const log = [];
  child.stderr.setEncoding("utf8");
  let partial = "";
  child.stderr.on("data", (chunk) => {
    partial += chunk;
    const lines = partial.split("\n");
    partial = lines.pop();
    log.push(...lines);
  });
  return { child, log };
}

async function main() {
  fs.mkdirSync(artifacts, { recursive: true });
  const mock = await startMock();
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `gate-ui-${runtime}-`));
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), `gate-ui-chromium-${runtime}-`));
  // The "Nix" layer: an upstream defined by a --config file.
  const configFile = path.join(stateDir, "..", path.basename(stateDir) + "-nix.toml");
  fs.writeFileSync(configFile, `[upstreams.nixup]\nprovider = "custom"\nbase_url = "http://127.0.0.1:${mock.port}/v1"\nmodels = ["nix-model"]\n`);
  const gate = startGate(stateDir, configFile);
  let context;
  try {
    const loginUrl = await waitFor("the login URL in the daemon's log", () => {
      for (const line of gate.log) {
        const m = line.match(/(http:\/\/\S+\/ui\/login\?code=[A-Za-z0-9_-]+)/);
        if (m) return m[1];
      }
      return null;
    });
    const base = new URL(loginUrl).origin;

    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      viewport: { width: 1280, height: 860 },
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const page = context.pages()[0] || await context.newPage();
    page.on("dialog", (d) => d.accept());
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    const shot = (name) => page.screenshot({ path: path.join(artifacts, `${runtime}-${name}.png`), fullPage: true });
    const loaded = (name) => page.waitForSelector(`body[data-loaded="${name}"]`);
    const go = async (name) => {
      await page.evaluate(() => { delete document.body.dataset.loaded; });
      await page.click(`nav a[data-page="${name}"]`);
      await loaded(name);
    };
    const noSecretOnPage = async (where) => {
      const html = await page.content();
      check(!html.includes(UPSTREAM_KEY), `the upstream key is visible on the ${where} page`);
    };

    // Before signing in, the UI says how to.
    await page.goto(base + "/ui/");
    check((await page.textContent("body")).includes("gate status"), "the sign-in page does not say how to sign in");
    await shot("signed-out");

    // Sign in with the printed link.
    await page.goto(loginUrl);
    await loaded("status");
    check(page.url() === base + "/ui/", `after login the URL is ${page.url()}`);
    check((await page.textContent("#status-upstreams")).includes("nixup"), "the --config upstream is not on the status page");
    await shot("status-start");

    // Add an upstream with a key.
    await go("upstreams");
    await page.fill("#upstream-form input[name=name]", "mock");
    await page.selectOption("#upstream-form select[name=provider]", "custom");
    await page.fill("#upstream-form input[name=base_url]", `http://127.0.0.1:${mock.port}/v1`);
    await page.fill("#upstream-form input[name=api_key]", UPSTREAM_KEY);
    await page.fill("#upstream-form input[name=models]", "ui-model");
    await page.click("#upstream-save");
    await page.waitForSelector('tr[data-upstream="mock"]');
    const keyCell = await page.textContent('tr[data-upstream="mock"] td.api-key');
    check(keyCell.includes("set") && keyCell.includes("runtime"), `key cell shows "${keyCell}"`);
    check((await page.inputValue("#upstream-form input[name=api_key]")) === "", "the key field was not cleared");
    await noSecretOnPage("upstreams");
    await shot("upstreams");

    // A bad value is refused with the reason.
    await page.fill("#upstream-form input[name=name]", "broken");
    await page.selectOption("#upstream-form select[name=provider]", "custom");
    await page.click("#upstream-save");
    await page.waitForSelector("#message.error");
    check((await page.textContent("#message")).includes("base_url"), "refusal does not name the key");
    await shot("upstreams-refused");
    check(await page.$('tr[data-upstream="broken"]') === null, "a refused upstream was listed");

    // An API key for the client; shown once.
    await go("tokens");
    await page.fill("#token-form input[name=name]", "ui-test");
    await page.click("#token-form button[type=submit]");
    await page.waitForSelector("#new-token:not([hidden])");
    const apiKey = (await page.textContent("#new-token-value")).trim();
    check(apiKey.startsWith("gk_"), `unexpected API key "${apiKey}"`);
    await page.waitForSelector("#tokens-table tbody tr");
    await shot("tokens");

    // The page offers a ready-to-paste request; run it as a user would, with curl.
    const curl = (await page.textContent("#new-token-curl")).trim();
    check(/"model":"(ui-model|nix-model)"/.test(curl) && curl.includes(apiKey), `curl example: ${curl}`);
    // (async: the mock upstream runs in this process)
    const { stdout: curlOut } = await execFileAsync("bash", ["-c", curl + " --silent --show-error --max-time 20"]);
    check(JSON.parse(curlOut).choices[0].message.content === "hello from the mock", `curl answer: ${curlOut}`);

    // A chat request through the new upstream, like an SDK would send it.
    const response = await fetch(base + "/v1/chat/completions", {
      method: "POST",
      headers: { authorization: "Bearer " + apiKey, "content-type": "application/json" },
      body: JSON.stringify({ model: "ui-model", messages: [{ role: "user", content: "hi" }] }),
    });
    const answer = await response.json();
    check(response.status === 200, `chat request: ${response.status} ${JSON.stringify(answer)}`);
    check(answer.choices[0].message.content === "hello from the mock", "the answer did not come from the mock");
    check(mock.seenAuth.at(-1) === "Bearer " + UPSTREAM_KEY, "the upstream did not get its key");

    // Edit the upstream without retyping the key: the key is kept.
    await go("upstreams");
    await page.click('tr[data-upstream="mock"] button:text("Edit")');
    check((await page.inputValue("#upstream-form input[name=api_key]")) === "", "the key was shown back for editing");
    await page.fill("#upstream-form input[name=models]", "ui-model, ui-model-2");
    await page.click("#upstream-save");
    await page.waitForSelector("#message.ok");
    const second = await fetch(base + "/v1/chat/completions", {
      method: "POST",
      headers: { authorization: "Bearer " + apiKey, "content-type": "application/json" },
      body: JSON.stringify({ model: "ui-model-2", messages: [{ role: "user", content: "hi" }] }),
    });
    check(second.status === 200, `chat request after edit: ${second.status}`);

    // Give the key a policy from the page: the table shows it and the API stores it.
    await go("tokens");
    await page.click('#tokens-table tr:has-text("ui-test") button:text("Edit")');
    check((await page.inputValue("#token-form input[name=name]")) === "ui-test", "the edit form is not filled");
    await page.fill("#token-form input[name=models]", "ui-model, ui-model-*");
    await page.fill("#token-form input[name=rpm]", "30");
    await page.fill("#token-form input[name=budget]", "5");
    await page.selectOption("#token-form select[name=period]", "day");
    await page.fill("#token-form input[name=owner]", "ui team");
    await page.click("#token-submit");
    await page.waitForSelector("#message.ok");
    const chips = await waitFor("the policy chips", async () => {
      const text = await page.textContent('#tokens-table tr:has-text("ui-test")');
      return text.includes("30 req/min") ? text : null;
    });
    for (const want of ["models ui-model, ui-model-*", "30 req/min", "$5.00 / day", "owner ui team"]) {
      check(chips.includes(want), `policy chips lack "${want}": ${chips}`);
    }
    await shot("tokens-policy");
    // A bad value is refused with the field named, and the key keeps its policy.
    await page.click('#tokens-table tr:has-text("ui-test") button:text("Edit")');
    await page.fill("#token-form input[name=expires]", "soon");
    await page.click("#token-submit");
    await page.waitForSelector("#message.error");
    check((await page.textContent("#message")).includes("expires"), "the refusal does not name expires");
    await page.click("#token-cancel");
    // Emptying a field removes that limit only.
    await page.click('#tokens-table tr:has-text("ui-test") button:text("Edit")');
    await page.fill("#token-form input[name=rpm]", "");
    await page.click("#token-submit");
    await waitFor("the rate limit removed in the table", async () =>
      !(await page.textContent('#tokens-table tr:has-text("ui-test")')).includes("req/min"));
    const adminToken = fs.readFileSync(path.join(stateDir, "admin.token"), "utf8").trim();
    const stored = await (await fetch(base + "/admin/api/tokens", { headers: { authorization: "Bearer " + adminToken } })).json();
    const policy = stored.tokens.find(t => t.name === "ui-test").policy;
    check(policy.rpm === undefined && policy.budget.usd === 5 && policy.budget.period === "day" && policy.owner === "ui team",
      `stored policy: ${JSON.stringify(policy)}`);
    // Policies are enforced: a model outside the key's list is refused...
    const refused = await fetch(base + "/v1/chat/completions", {
      method: "POST",
      headers: { authorization: "Bearer " + apiKey, "content-type": "application/json" },
      body: JSON.stringify({ model: "nix-model", messages: [{ role: "user", content: "hi" }] }),
    });
    check(refused.status === 403, `a model outside the key's list: ${refused.status}`);
    // ...until the limits are removed from the page (every field emptied).
    await page.click('#tokens-table tr:has-text("ui-test") button:text("Edit")');
    for (const field of ["models", "budget", "owner"]) await page.fill(`#token-form input[name=${field}]`, "");
    await page.click("#token-submit");
    await waitFor("the key's limits removed in the table", async () =>
      (await page.textContent('#tokens-table tr:has-text("ui-test")')).includes("no limits"));
    await go("upstreams");
    check(mock.seenAuth.at(-1) === "Bearer " + UPSTREAM_KEY, "editing lost the key");

    // Edit the --config upstream: only the changed field moves to the runtime layer.
    check((await page.textContent('tr[data-upstream="nixup"]')).includes("nix"), "nixup is not shown as coming from nix");
    await page.click('tr[data-upstream="nixup"] button:text("Edit")');
    await page.fill("#upstream-form input[name=models]", "nix-model, nix-model-2");
    await page.click("#upstream-save");
    await page.waitForSelector("#message.ok");
    await go("config");
    check(await page.getAttribute('tr[data-key="upstreams.nixup.models"]', "data-layer") === "runtime", "edited field not in the runtime layer");
    check(await page.getAttribute('tr[data-key="upstreams.nixup.provider"]', "data-layer") === "nix", "unchanged field moved out of the nix layer");
    check(await page.getAttribute('tr[data-key="upstreams.nixup.base_url"]', "data-layer") === "nix", "unchanged base_url moved out of the nix layer");

    // Models and routes.
    await go("models");
    const models = await page.textContent("#models-table");
    check(models.includes("ui-model") && models.includes("mock"), `models page: ${models}`);
    await noSecretOnPage("models");
    await shot("models");

    // Change a setting; it shows as coming from the runtime layer.
    await go("config");
    const before = await page.getAttribute('tr[data-key="log_level"]', "data-layer");
    check(before === "defaults", `log_level starts in layer ${before}`);
    await page.fill("#config-form input[name=key]", "log_level");
    await page.fill("#config-form input[name=value]", "debug");
    await page.click("#config-form button[type=submit]");
    await page.waitForSelector('tr[data-key="log_level"][data-layer="runtime"]');
    const row = await page.textContent('tr[data-key="log_level"]');
    check(row.includes("debug") && row.includes("runtime"), `log_level row: ${row}`);
    const keyRow = await page.textContent('tr[data-key="upstreams.mock.api_key"]');
    check(keyRow.includes("(set)"), `api_key row: ${keyRow}`);
    await noSecretOnPage("config");
    await shot("config");

    // A broken runtime file: the UI shows the error, the gateway keeps working.
    const runtimeFile = path.join(stateDir, "config.toml");
    const good = fs.readFileSync(runtimeFile, "utf8");
    fs.writeFileSync(runtimeFile, good + "\nport = [\n");
    await waitFor("the reload error in the UI", async () => {
      await page.evaluate(() => { delete document.body.dataset.loaded; });
      await page.click('nav a[data-page="status"]');
      await page.evaluate(() => window.dispatchEvent(new HashChangeEvent("hashchange")));
      await loaded("status");
      return await page.isVisible("#reload-error");
    });
    const shown = await page.textContent("#reload-error");
    check(shown.includes("config.toml") && shown.includes("line"), `reload error: ${shown}`);
    await shot("status-reload-error");
    fs.writeFileSync(runtimeFile, good);
    await waitFor("the reload error to clear", async () => {
      await page.evaluate(() => { delete document.body.dataset.loaded; window.dispatchEvent(new HashChangeEvent("hashchange")); });
      await loaded("status");
      return !(await page.isVisible("#reload-error"));
    });
    const health = await page.textContent("#status-upstreams");
    check(health.includes("mock") && health.includes("healthy"), `status upstreams: ${health}`);
    await noSecretOnPage("status");
    await shot("status");

    // Remove the upstreams, the --config one included.
    await go("upstreams");
    await page.click('tr[data-upstream="mock"] button:text("Remove")');
    await page.waitForSelector('tr[data-upstream="mock"]', { state: "detached" });
    await page.click('tr[data-upstream="nixup"] button:text("Remove")');
    await page.waitForSelector('tr[data-upstream="nixup"]', { state: "detached" });
    await page.waitForSelector("#upstreams-empty:not([hidden])");
    const gone = await fetch(base + "/v1/chat/completions", {
      method: "POST",
      headers: { authorization: "Bearer " + apiKey, "content-type": "application/json" },
      body: JSON.stringify({ model: "nix-model", messages: [{ role: "user", content: "hi" }] }),
    });
    check(gone.status === 404, `request to a removed upstream's model: ${gone.status}`);
    await go("config");
    await shot("config-after-removal");
    // Restore the --config upstream from the configuration page: it serves again.
    await page.click('tr[data-key="upstreams.nixup"] button:text("Restore")');
    await page.waitForSelector('tr[data-key="upstreams.nixup.provider"][data-layer="nix"]');
    const back = await fetch(base + "/v1/chat/completions", {
      method: "POST",
      headers: { authorization: "Bearer " + apiKey, "content-type": "application/json" },
      body: JSON.stringify({ model: "nix-model", messages: [{ role: "user", content: "hi" }] }),
    });
    check(back.status === 200, `request after restoring the --config upstream: ${back.status}`);

    // The Usage page: the requests above are in the log (written within a second), by key
    // and per day, and a budget shows as a bar.
    const tokenId = (await (await fetch(base + "/admin/api/tokens", { headers: { authorization: "Bearer " + adminToken } })).json())
      .tokens.find(t => t.name === "ui-test").id;
    const patched = await fetch(base + "/admin/api/tokens/" + tokenId, {
      method: "PATCH", headers: { authorization: "Bearer " + adminToken, "content-type": "application/json" },
      body: JSON.stringify({ budget: 5, period: "day" }),
    });
    check(patched.status === 200, `budget through the API: ${patched.status}`);
    await waitFor("usage records of the ui-test key", async () => {
      await go("usage");
      const text = await page.textContent("#usage-keys");
      return text.includes("ui-test") ? text : null;
    });
    const keysText = await page.textContent("#usage-keys");
    check(/unknown \(\d+\)/.test(keysText), `the cost of unpriced requests is not marked unknown: ${keysText}`);
    check(await page.$("#usage-tokens-chart svg rect") !== null, "no bars in the tokens chart");
    const budgetText = await page.textContent(`#usage-budgets .budget[data-id="${tokenId}"]`);
    check(budgetText.includes("of $5.00 this day"), `budget bar: ${budgetText}`);
    await shot("usage");

    // The login link worked once only.
    const again = await context.newPage();
    const r = await again.goto(loginUrl);
    check(r.status() === 401, `second use of the login link: ${r.status()}`);
    await again.close();

    check(pageErrors.length === 0, `JavaScript errors: ${pageErrors.join("; ")}`);
    const logText = gate.log.join("\n");
    check(!logText.includes(UPSTREAM_KEY), "the upstream key is in the daemon's log");
    check(!logText.includes(apiKey), "the API key is in the daemon's log");
    console.log(`ui test (${runtime}): ok; screenshots in ${artifacts}`);
  } finally {
    if (context) await context.close();
    gate.child.kill("SIGKILL");
    mock.server.close();
    fs.rmSync(stateDir, { recursive: true, force: true });
    fs.rmSync(configFile, { force: true });
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
