// Chromium through the relay (issue 13): the real `gate-relay` and `gate` binaries on loopback,
// the daemon registered with a custom name under the `gate.localhost` suffix (Chromium resolves
// every *.localhost name to loopback itself), and headless Chromium opening the daemon by its
// custom name and by its node-id name. Checks, per name: /health answers over TLS 1.3 with
// the daemon's own self-signed certificate (the relay never terminates TLS), the API refuses
// a relayed client without a token, and the web UI signs in from the public address with a
// one-time link from `gate status`; a name nobody owns is refused. A screenshot of the UI
// goes to artifacts/<relay runtime>-<daemon runtime>-relay.png.
//
// Usage: node relay.test.mjs --relay-runtime tokio|smol --daemon-runtime tokio|smol
// (GATE_BIN, GATE_RELAY_BIN: the binaries)
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import fs from "node:fs";
import net from "node:net";
import dgram from "node:dgram";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const execFileAsync = promisify(execFile);
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const relayRuntime = arg("--relay-runtime", "tokio");
const daemonRuntime = arg("--daemon-runtime", "tokio");
const label = `${relayRuntime}-${daemonRuntime}`;
const gateBin = process.env.GATE_BIN;
const relayBin = process.env.GATE_RELAY_BIN;
const artifacts = path.join(path.dirname(new URL(import.meta.url).pathname), "artifacts");
const DEADLINE_MS = 30000;

function fail(message) { throw new Error(`[relay ${label}] ${message}`); }
function check(condition, message) { if (!condition) fail(message); }

async function waitFor(what, fn) {
  const start = Date.now();
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() - start > DEADLINE_MS) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// A free port for TCP and UDP both (the relay's HTTPS port takes both; so does p2p_port).
async function freePort() {
  for (;;) {
    const port = await new Promise((resolve) => {
      const s = net.createServer();
      s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
    });
    const udpFree = await new Promise((resolve) => {
      const u = dgram.createSocket("udp4");
      u.once("error", () => resolve(false));
      u.bind(port, "127.0.0.1", () => u.close(() => resolve(true)));
    });
    if (udpFree) return port;
  }
}

function start(bin, args, env) {
  const clean = { ...process.env, RUST_LOG: "info", ...env };
  for (const k of Object.keys(clean)) {
    if ((k.startsWith("GATE_") || k.startsWith("RELAY_")) && !(k in env)) delete clean[k];
  }
  const child = spawn(bin, args, { env: clean, stdio: ["ignore", "ignore", "pipe"] });
  const log = [];
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => log.push(chunk));
  return { child, log };
}

async function main() {
  check(gateBin && relayBin, "GATE_BIN and GATE_RELAY_BIN must be set");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `gate-ui-relay-${label}-`));
  const children = [];
  let context;
  try {
    const httpsPort = await freePort();
    const p2pPort = await freePort();
    const daemonP2p = await freePort();
    fs.writeFileSync(path.join(dir, "relay.toml"),
      `https_port = ${httpsPort}\np2p_port = ${p2pPort}\nbind_address = "127.0.0.1"\ndomain_suffix = "gate.localhost"\n`);
    const relayState = path.join(dir, "relay-state");
    const { stdout: relayIdOut } = await execFileAsync(relayBin, ["id", "--state-dir", relayState]);
    const relayId = relayIdOut.trim();
    const relay = start(relayBin, ["serve", "--runtime", relayRuntime, "--config",
      path.join(dir, "relay.toml"), "--state-dir", relayState], {});
    children.push(relay);

    const custom = "chromium" + Math.random().toString(36).slice(2, 8);
    fs.writeFileSync(path.join(dir, "gate.toml"),
      `p2p_port = ${daemonP2p}\n[relay]\nenable = true\naddresses = ["${relayId}@127.0.0.1:${p2pPort}"]\ncustom_domain = "${custom}"\n`);
    const gateState = path.join(dir, "gate-state");
    const daemon = start(gateBin, ["serve", "--runtime", daemonRuntime, "--host", "127.0.0.1",
      "--port", "0", "--config", path.join(dir, "gate.toml"), "--state-dir", gateState], {});
    children.push(daemon);

    await waitFor("the daemon to register with the relay", async () => {
      try {
        const { stdout } = await execFileAsync(gateBin, ["status", "--config", path.join(dir, "gate.toml"),
          "--state-dir", gateState]);
        return /^relay: registered/m.test(stdout);
      } catch (_) { return false; }
    });
    const { stdout: nodeIdOut } = await execFileAsync(gateBin, ["id", "--state-dir", gateState]);
    const nodeId = nodeIdOut.trim();

    // The browser profile lives in the test's directory, removed with it at the end.
    const userDataDir = fs.mkdtempSync(path.join(dir, "chromium-"));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      // The daemon's certificate is self-signed until Let's Encrypt delivers one.
      ignoreHTTPSErrors: true,
      viewport: { width: 1280, height: 860 },
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const page = context.pages()[0] || await context.newPage();

    for (const name of [custom, nodeId]) {
      const host = `${name}.gate.localhost`;
      const origin = `https://${host}:${httpsPort}`;
      const health = await page.goto(`${origin}/health`, { timeout: DEADLINE_MS });
      check(health && health.status() === 200, `${host}/health: status ${health && health.status()}`);
      const details = await health.securityDetails();
      check(details, `no TLS details for ${host}`);
      check(details.protocol === "TLS 1.3", `${host}: protocol ${details.protocol}`);
      // The certificate is the daemon's own self-signed one, not anything of the relay's.
      const subject = details.subjectName || "";
      check(subject.startsWith("Gate self-signed"),
        `${host}: certificate subject ${JSON.stringify(subject)} is not the daemon's`);
      // Relayed clients are never trusted as loopback: the API wants a token.
      const index = await page.goto(`${origin}/v1/models`, { timeout: DEADLINE_MS });
      check(index && index.status() === 401, `${host}/v1/models without a token: status ${index && index.status()}`);
      // The web UI from the public address, signed in with a one-time link from `gate status`.
      const { stdout: status } = await execFileAsync(gateBin, ["status", "--config", path.join(dir, "gate.toml"),
        "--state-dir", gateState]);
      const code = (status.match(/\/ui\/login\?code=([A-Za-z0-9_-]+)/) || [])[1];
      check(code, `gate status printed no login link:\n${status}`);
      await page.goto(`${origin}/ui/login?code=${code}`, { timeout: DEADLINE_MS });
      await page.waitForSelector("body[data-loaded]", { timeout: DEADLINE_MS });
      check(new URL(page.url()).host === `${host}:${httpsPort}`, `the UI left the public address: ${page.url()}`);
      // The status page gives the address that works from here (the public one, not the
      // daemon's loopback listen address) and lists both names the relay granted.
      const baseUrl = await waitFor("the base URL on the status page", async () =>
        (await page.textContent("#base-url").catch(() => null)) || null);
      check(baseUrl === `${origin}/v1`, `the status page's base URL is ${JSON.stringify(baseUrl)}, not ${origin}/v1`);
      const urls = await waitFor("the relay's public URLs on the status page", async () => {
        const found = await page.$$eval("#relay-state .public-url", (as) => as.map((a) => a.textContent));
        return found.length >= 2 ? found : null;
      });
      for (const n of [custom, nodeId]) {
        check(urls.some((u) => new URL(u).hostname === `${n}.gate.localhost`),
          `the relay card does not list ${n}.gate.localhost: ${JSON.stringify(urls)}`);
      }
      if (name === custom) {
        await page.screenshot({ path: path.join(artifacts, `${label}-relay.png`), fullPage: true });
      }
    }
    // A name nobody owns: Chromium gets the relay's unrecognized_name alert, not a page.
    let refused = false;
    try {
      await page.goto(`https://nobody-here.gate.localhost:${httpsPort}/`, { timeout: DEADLINE_MS });
    } catch (e) {
      refused = /ERR_SSL|ERR_CONNECTION|ERR_FAILED/.test(String(e));
      check(refused, `an unknown name failed in an unexpected way: ${e}`);
    }
    check(refused, "an unknown name was answered");
    console.log(`relay ${label}: Chromium reached the daemon through the relay by its custom name and its node id`);
  } catch (e) {
    for (const c of children) process.stderr.write(c.log.join("").slice(-4000));
    throw e;
  } finally {
    if (context) await context.close().catch(() => {});
    // Each process gone before its state directory is removed: a relay still stopping writes
    // its state, and a removal racing it fails with ENOTEMPTY.
    await Promise.all(children.map(({ child }) => new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const force = setTimeout(() => child.kill("SIGKILL"), 10_000);
      child.once("exit", () => { clearTimeout(force); resolve(); });
      child.kill("SIGTERM");
    })));
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  }
}

main().catch((e) => { console.error(String(e.stack || e)); process.exit(1); });
