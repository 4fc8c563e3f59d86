// Helpers for driving tokend's console in real headless Chromium
// (Debian's `chromium`, through puppeteer-core from web/node_modules), and
// for changing tokens behind its back with the real `tokend` CLI.
//
// Environment (set by tests/console.rs):
//   TOKEND_URL        http://127.0.0.1:PORT, the server under test
//   TOKEND_BIN        the tokend binary (its client subcommands)
//   TOKEND_TOKEN_FILE the operator's secret, for the CLI
//   ARTIFACTS         where screenshots go
//   WEB_DIR           web/ (its node_modules hold puppeteer-core and axe-core)
//   CHROMIUM          the browser (default /usr/bin/chromium)
//   TOKEND_PID, TOKEND_RESTART  (scenario "resume") the server's pid, and
//                     the command line that starts it again

import { execFile, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set (tests/console.rs sets it)`);
  return v;
};

export const URL_ = env("TOKEND_URL");
export const BIN = env("TOKEND_BIN");
export const TOKEN_FILE = env("TOKEND_TOKEN_FILE");
export const ARTIFACTS = env("ARTIFACTS", path.join(tmpdir(), "tokend-console"));
const WEB_DIR = env("WEB_DIR");
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
export const TIMEOUT = 20_000;

const require = createRequire(path.join(WEB_DIR, "package.json"));
const puppeteer = require("puppeteer-core");
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

mkdirSync(ARTIFACTS, { recursive: true });

// ------------------------------------------------------------------ browser

// Temporary dirs (browser profiles, secret files), removed by cleanup().
const profiles = [];

export async function launch() {
  const profile = mkdtempSync(path.join(tmpdir(), "tokend-chromium-"));
  profiles.push(profile);
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    protocolTimeout: 60_000,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
      "--lang=en-US",
    ],
  });
}

export function cleanup() {
  stopRestarted();
  for (const p of profiles) rmSync(p, { recursive: true, force: true });
}

/**
 * A fresh browser session (its own context: no shared storage), with
 * everything that would be a bug collected: page errors, console errors and
 * CSP violations.
 */
export async function session(browser, name, viewport = { width: 1280, height: 860 }) {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport(viewport);
  page.setDefaultTimeout(TIMEOUT);
  page.problems = [];
  page.sessionName = name;
  page.on("pageerror", (e) => page.problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") page.problems.push(`console error: ${m.text()}`);
  });
  await page.evaluateOnNewDocument(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  return page;
}

/** Opens the console and signs in with `secret`; waits for the token list. */
export async function signIn(page, secret, { expectList = true, hash = "" } = {}) {
  await page.goto(`${URL_}/${hash}`, { waitUntil: "domcontentloaded" });
  await page.waitForSelector("#secret");
  await page.type("#secret", secret, { delay: 0 });
  await page.click("form.signin button[type=submit]");
  if (expectList) await listReady(page);
}

/** The list is loaded (the first snapshot arrived) and live. */
export async function listReady(page) {
  await page.waitForFunction(
    () => document.querySelector("#live-state")?.textContent === "Live" && document.querySelector("#token-count")?.textContent !== "",
  );
}

export const rowSel = (id) => `tr[data-token-id="${id}"]`;

export async function hasRow(page, id) {
  return (await page.$(rowSel(id))) !== null;
}

export async function waitRowGone(page, id) {
  await page.waitForFunction((sel) => !document.querySelector(sel), {}, rowSel(id));
}

export async function waitRow(page, id) {
  await page.waitForSelector(rowSel(id));
}

/** Text of an element, or "" if it is missing. */
export async function text(page, selector) {
  return page.$eval(selector, (e) => e.textContent ?? "").catch(() => "");
}

/** Whether `selector` matches nothing within `ms` (a close that should not happen). */
export async function goneWithin(page, selector, ms) {
  return page.waitForFunction((sel) => !document.querySelector(sel), { timeout: ms }, selector).then(
    () => true,
    () => false,
  );
}

/** Whether some element matching `selector` is on screen (not hidden). */
export async function visible(page, selector) {
  for (const el of await page.$$(selector)) if (await el.isVisible()) return true;
  return false;
}

/** Waits until some toast says `needle`; returns its text. */
export async function toastSaying(page, needle) {
  const h = await page.waitForFunction(
    (n) => [...document.querySelectorAll(".toast")].map((t) => t.textContent).find((t) => t.includes(n)),
    {},
    needle,
  );
  return h.jsonValue();
}

/** Clicks a menu item by its label in the open menu. */
export async function chooseMenuItem(page, label) {
  await page.waitForSelector(".menu:not([hidden]) [role=menuitem]");
  const items = await page.$$(".menu:not([hidden]) [role=menuitem]");
  for (const it of items) {
    if ((await it.evaluate((e) => e.textContent)) === label) {
      await it.click();
      return;
    }
  }
  throw new Error(`no menu item "${label}"`);
}

/** Opens a row's ••• menu and picks `label`. */
export async function rowAction(page, id, label) {
  await page.click(`${rowSel(id)} [aria-haspopup=menu]`);
  await chooseMenuItem(page, label);
}

export async function shot(page, name) {
  // Let transitions (a message sliding in) finish first.
  await page.evaluate(() => Promise.all(document.getAnimations().map((a) => a.finished)));
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file });
  log(`screenshot ${file}`);
  return file;
}

/**
 * axe-core (web/node_modules/axe-core, evaluated through the DevTools
 * protocol, which the page's CSP does not govern) over the whole page:
 * serious or critical violations fail the test.
 */
export async function axe(page, screen) {
  const loaded = await page.evaluate(() => typeof window.axe === "object");
  if (!loaded) await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")),
    }));
  });
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of violations) log(`axe ${screen}: ${v.impact} ${v.id} (${v.help}) at ${v.nodes.join(", ")}`);
  if (bad.length > 0) {
    throw new Error(`axe: ${bad.length} serious/critical violation(s) on "${screen}": ${JSON.stringify(bad)}`);
  }
  log(`axe ${screen}: no serious or critical violations (${violations.length} minor)`);
}

/**
 * Fails on page errors, console errors or CSP violations seen so far, but
 * those matching `allowed` (e.g. refused connections while tokend is down).
 */
export function assertClean(page, allowed = null) {
  const problems = page.problems.filter((p) => !(allowed && allowed.test(p)));
  if (problems.length > 0) throw new Error(`${page.sessionName}: ${problems.join("; ")}`);
}

/** Nothing of a secret in storage or the URL. */
export async function assertSecretNowhere(page, secret, where) {
  const found = await page.evaluate(
    (s) => {
      const places = [];
      if (location.href.includes(s)) places.push("URL");
      if (document.documentElement.outerHTML.includes(s)) places.push("DOM");
      for (const input of document.querySelectorAll("input, textarea")) if (input.value.includes(s)) places.push(`value of #${input.id}`);
      if (localStorage.length > 0) places.push("localStorage");
      if (sessionStorage.length > 0) places.push("sessionStorage");
      if (document.cookie !== "") places.push("cookie");
      return places;
    },
    secret,
  );
  if (found.length > 0) throw new Error(`the secret is in ${found.join(", ")} (${where})`);
}

// ------------------------------------------------------------ restarting

let server = { pid: Number(process.env.TOKEND_PID ?? 0), child: null };
const restartArgv = JSON.parse(process.env.TOKEND_RESTART ?? "null");

function portOpen() {
  const u = new URL(URL_);
  return new Promise((resolve) => {
    const s = net.connect({ host: u.hostname, port: Number(u.port) }, () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

async function until(what, cond, ms = TIMEOUT) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Stops tokend (SIGTERM) under an open page, waits for four refused
 * reconnects, then, with the page kept offline, starts tokend again on the
 * same port and data and runs `meanwhile` (changes the page must catch up
 * on); back online, the page reconnects.
 */
export async function restartTokend(page, meanwhile) {
  if (!restartArgv || !server.pid) throw new Error("TOKEND_PID and TOKEND_RESTART are not set");
  let refused = 0;
  const onFailed = (r) => {
    if (r.url().endsWith("/WatchTokens") && /CONNECTION_REFUSED/.test(r.failure()?.errorText ?? "")) refused += 1;
  };
  page.on("requestfailed", onFailed);
  process.kill(server.pid, "SIGTERM");
  await until("tokend to stop", async () => !(await portOpen()));
  await page.waitForFunction(() => document.querySelector("#live-state")?.textContent === "Reconnecting…");
  log("ok: the page noticed the dropped stream");
  // The page retries after 250, 500, 1000 and 2000 ms, then after 5 and
  // 10 s. Kept offline meanwhile, so that it reconnects only once all of
  // `meanwhile` is made (inside the 5 s pause was not always, on a busy
  // machine); back online, it tries again at once.
  await until("four refused reconnects", async () => refused >= 4, 30_000);
  page.off("requestfailed", onFailed);
  await page.setOfflineMode(true);
  const [bin, ...args] = restartArgv;
  const child = spawn(bin, args, { stdio: "ignore" });
  server = { pid: child.pid, child };
  await until("tokend to serve again", portOpen);
  await meanwhile();
  const back = Date.now();
  await page.setOfflineMode(false);
  await page.waitForFunction(() => document.querySelector("#live-state")?.textContent === "Live");
  log(`ok: back online, the page was live again ${Date.now() - back} ms later`);
}

/** Stops a tokend this script started. */
export function stopRestarted() {
  if (server.child && server.child.exitCode === null) server.child.kill("SIGTERM");
}

// ---------------------------------------------------------------------- CLI

const run = promisify(execFile);

/**
 * `tokend ARGS… --output json` as the operator; its parsed answer (one
 * resource, when the CLI prints a table of one).
 */
export async function cli(...args) {
  return cliAs(TOKEN_FILE, ...args);
}

/** Like `cli`, with the secret in `tokenFile` (see `secretFile`). */
export async function cliAs(tokenFile, ...args) {
  const { stdout } = await run(BIN, [...args, "--server", URL_, "--token-file", tokenFile, "--output", "json"], {
    timeout: TIMEOUT,
  });
  if (stdout.trim() === "") return null;
  const v = JSON.parse(stdout);
  return Array.isArray(v) && v.length === 1 ? v[0] : v;
}

/** A file (mode 0600, removed by `cleanup`) holding `secret`, for `cliAs`. */
export function secretFile(secret) {
  const dir = mkdtempSync(path.join(tmpdir(), "tokend-secret-"));
  profiles.push(dir);
  const file = path.join(dir, "token");
  writeFileSync(file, secret, { mode: 0o600 });
  return file;
}

/** The CLI's exit code (e.g. 3 for not found). */
export async function cliCode(...args) {
  try {
    await run(BIN, [...args, "--server", URL_, "--token-file", TOKEN_FILE, "--output", "json"], { timeout: TIMEOUT });
    return 0;
  } catch (e) {
    if (typeof e.code === "number") return e.code;
    throw e;
  }
}

export function log(line) {
  process.stdout.write(`${line}\n`);
}

export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  log(`ok: ${what}`);
}
