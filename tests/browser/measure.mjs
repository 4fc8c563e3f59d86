// Measures the console (not a test; rerun by hand, figures go in reports):
//   node tests/browser/measure.mjs [--deletes N] [--loads N]
// with TOKEND_BIN (default target/debug/tokend, or $CARGO_TARGET_DIR's).
//
// It starts its own tokend on a free loopback port and temp data dir, and
// reports:
//   - the bundle's size, raw (what tokend sends) and gzip -9;
//   - from the first byte of the page to a usable token list (sign-in form
//     ready, then the secret pasted and the list shown), over --loads runs;
//   - from the answer of `tokend tokens delete --yes` (the CLI printing it)
//     to the row disappearing from another browser session's open list,
//     p50/p99 over --deletes deletes (default 60).

import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const DELETES = arg("--deletes", 60);
const LOADS = arg("--loads", 10);
const target = process.env.CARGO_TARGET_DIR ?? path.join(root, "target");
const BIN = process.env.TOKEND_BIN ?? path.join(target, "debug/tokend");
if (!existsSync(BIN)) throw new Error(`no tokend at ${BIN}: cargo build, or set TOKEND_BIN`);

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const data = mkdtempSync(path.join(tmpdir(), "tokend-measure-"));
const url = `http://127.0.0.1:${port}`;
const server = spawn(BIN, ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", data], { stdio: "ignore" });
for (let i = 0; ; i++) {
  if (existsSync(path.join(data, "operator.token")) && (await open(port))) break;
  if (i > 300) throw new Error("tokend did not start");
  await new Promise((r) => setTimeout(r, 50));
}

Object.assign(process.env, {
  TOKEND_URL: url,
  TOKEND_BIN: BIN,
  TOKEND_TOKEN_FILE: path.join(data, "operator.token"),
  WEB_DIR: path.join(root, "web"),
});
const L = await import("./lib.mjs");
const run = promisify(execFile);

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const fmt = (x) => `${x.toFixed(1)} ms`;

try {
  // ---------------------------------------------------------------- bundle
  const dist = path.join(root, "web/dist");
  let raw = 0;
  let gz = 0;
  for (const f of ["index.html", "console.js", "console.css"]) {
    const b = readFileSync(path.join(dist, f));
    raw += b.length;
    gz += gzipSync(b, { level: 9 }).length;
    L.log(`bundle ${f}: ${b.length} B raw, ${gzipSync(b, { level: 9 }).length} B gzip`);
  }
  L.log(`bundle total: ${raw} B raw (${(raw / 1024).toFixed(1)} KiB), ${gz} B gzip (${(gz / 1024).toFixed(1)} KiB)`);

  // ----------------------------------------------------------- the fixture
  const acc = await L.cli("accounts", "create", "--name", "Measure Inc.", "--type", "client", "--module", "access-management", "--module", "commerce");
  const admin = await L.cli("tokens", "create", "--account", acc.id, "--name", "admin", "--module", "access-management");
  const ids = [];
  for (let i = 0; i < DELETES; i++) {
    const t = await L.cli("tokens", "create", "--account", acc.id, "--name", `token-${String(i).padStart(3, "0")}`, "--module", "commerce");
    ids.push(t.token.id);
  }
  L.log(`fixture: ${DELETES + 1} tokens in ${acc.id}`);

  const browser = await L.launch();
  try {
    // ------------------------------------------------- first byte → list
    const page = await L.session(browser, "measure");
    const toForm = [];
    const toList = [];
    const total = [];
    for (let i = 0; i < LOADS; i++) {
      // The secret is pasted at once (no typing), as a person pastes it.
      await page.goto(`${url}/`, { waitUntil: "domcontentloaded" });
      await page.waitForSelector("#secret");
      await page.$eval("#secret", (e, s) => (e.value = s), admin.secret);
      await page.click("form.signin button[type=submit]");
      await L.listReady(page);
      const t = await page.evaluate(() => {
        const nav = performance.getEntriesByType("navigation")[0];
        const mark = (n) => performance.getEntriesByName(n).at(-1)?.startTime ?? NaN;
        return { firstByte: nav.responseStart, form: mark("signin-ready"), submit: mark("signin-submit"), usable: mark("tokens-usable") };
      });
      toForm.push(t.form - t.firstByte);
      toList.push(t.usable - t.submit);
      total.push(t.usable - t.firstByte);
    }
    L.log(`first byte → sign-in form ready: p50 ${fmt(pct(toForm, 50))}, max ${fmt(Math.max(...toForm))} (${LOADS} loads)`);
    L.log(`secret submitted → usable list of ${DELETES + 1} tokens: p50 ${fmt(pct(toList, 50))}, max ${fmt(Math.max(...toList))}`);
    L.log(`first byte → usable list, secret pasted by the script: p50 ${fmt(pct(total, 50))}, max ${fmt(Math.max(...total))}`);

    // ------------------------------------------- CLI delete → row gone
    await page.select("#page-size", "100");
    await page.evaluate(() => {
      window.__gone = {};
      const tbody = document.querySelector("#tokens-table tbody");
      new MutationObserver((records) => {
        // Wall clock, as the shell's: both on this machine.
        const at = Date.now();
        for (const r of records) for (const n of r.removedNodes) if (n.dataset?.tokenId) window.__gone[n.dataset.tokenId] ??= at;
      }).observe(tbody, { childList: true });
    });
    const lat = [];
    for (const id of ids) {
      // The answer's time is taken by a shell reading the CLI's output line
      // ($EPOCHREALTIME), not by this busy node process.
      const { stdout } = await run("bash", [
        "-c",
        'set -o pipefail; "$0" tokens delete "$1" --yes --server "$2" --token-file "$3" | { read -r _; echo "$EPOCHREALTIME"; }',
        BIN,
        id,
        url,
        path.join(data, "operator.token"),
      ]);
      const answered = Number(stdout.trim().replace(",", ".")) * 1000;
      await page.waitForFunction((x) => window.__gone[x] !== undefined, {}, id);
      const gone = await page.evaluate((x) => window.__gone[x], id);
      lat.push(gone - answered);
      await new Promise((r) => setTimeout(r, 20));
    }
    L.log(
      `CLI delete answered → row gone in another session: p50 ${fmt(pct(lat, 50))}, p99 ${fmt(pct(lat, 99))}, min ${fmt(Math.min(...lat))}, max ${fmt(Math.max(...lat))} (${lat.length} deletes)`,
    );
  } finally {
    await browser.close();
  }
} finally {
  server.kill("SIGTERM");
  L.cleanup();
  await new Promise((r) => server.once("exit", r));
  rmSync(data, { recursive: true, force: true });
}

function open(p) {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port: p }, () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}
