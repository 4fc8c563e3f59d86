// The console's Audit trail scenarios (the details page's third tab, from
// ListTokenEvents and the page's WatchTokens stream); run by console.mjs
// like its own, with the same environment (see lib.mjs).

import * as L from "./lib.mjs";

const F = JSON.parse(process.env.FIXTURE ?? "{}");
const { check } = L;

export const AUDIT_TAB = "[role=tab][data-tab=audit]";

/** Waits for the Audit trail to show `n` rows; reads them. */
export async function trailOf(page, n) {
  await page.waitForFunction((k) => document.querySelectorAll("#audit-table tbody tr").length === k, {}, n);
  return page.$$eval("#audit-table tbody tr", (rows) =>
    rows.map((r) => {
      const time = r.querySelector("time");
      return {
        revision: Number(r.dataset.revision),
        type: r.dataset.type,
        when: time?.getAttribute("datetime") ?? "",
        title: time?.getAttribute("title") ?? "",
        shown: time?.textContent ?? "",
        who: r.querySelector('[data-label="Who"]')?.textContent ?? "",
        what: r.querySelector('[data-label="What"] strong')?.textContent ?? "",
        lines: [...r.querySelectorAll(".audit-changes li")].map((li) => li.textContent),
      };
    }),
  );
}
const types = (rows) => rows.map((r) => r.type).join(" ");
const descending = (rows) => rows.every((r, i) => i === 0 || rows[i - 1].revision > r.revision);

export const auditScenarios = {
  // The details page's Audit trail tab: a token created, renamed, disabled
  // and enabled with the CLI by the operator and by another account manager
  // is listed newest first with who, what and when; changes made elsewhere
  // and on the page itself appear once each, without a reload or a re-read;
  // the keyboard moves between tabs; "Show older changes" pages back.
  async audit(browser) {
    const made = await L.cli("tokens", "create", "--account", F.account.id, "--name", "release-manager", "--module", "access-management");
    const manager = { id: made.token.id, file: L.secretFile(made.secret) };
    const subject = (await L.cli("tokens", "create", "--account", F.account.id, "--name", "audit-subject", "--module", "commerce")).token;
    await L.cliAs(manager.file, "tokens", "update", subject.id, "--name", "audit-renamed");
    await L.cli("tokens", "disable", subject.id);
    await L.cliAs(manager.file, "tokens", "enable", subject.id);
    const record = await L.cli("tokens", "get", subject.id);

    const page = await L.session(browser, "admin");
    const reads = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/apitokens.v1.TokenService/ListTokenEvents")) reads.push(r.url());
    });
    await L.signIn(page, F.admin);
    await page.click(`${L.rowSel(subject.id)} a.token-name`);
    await page.waitForSelector("#endpoint");
    await page.evaluate(() => (window.__noReload = true));
    await page.click(AUDIT_TAB);
    let rows = await trailOf(page, 4);
    check(types(rows) === "ENABLED DISABLED UPDATED CREATED", `the four changes, newest first: ${types(rows)}`);
    check(descending(rows), "revisions strictly decrease, none twice");
    check(rows[0].who.includes("release-manager") && rows[0].who.includes(manager.id), `enabled by the other manager, by name: ${rows[0].who}`);
    check(rows[1].who === F.operator_id, `disabled by the operator, shown by id: ${rows[1].who}`);
    check(rows[2].who.includes("release-manager"), "renamed by the other manager");
    check(rows[3].who === F.operator_id, "created by the operator");
    const sameSecond = (iso, rfc3339) => Math.floor(Date.parse(iso) / 1000) === Date.parse(rfc3339) / 1000;
    const a = record.audit;
    check(
      sameSecond(rows[0].when, a.enabled.at) && a.enabled.by === manager.id &&
        sameSecond(rows[1].when, a.disabled.at) && a.disabled.by === F.operator_id &&
        sameSecond(rows[3].when, a.created.at) && a.created.by === F.operator_id,
      "when and who agree with the token's own audit record",
    );
    check(rows.every((r) => r.shown !== "" && r.title.includes(r.when)), "local time shown, the exact timestamp in its title");
    check(rows[2].what === "Updated" && rows[2].lines.includes("Name changed from “audit-subject” to “audit-renamed”"), `what the rename changed: ${rows[2].lines}`);
    check(rows[3].what === "Created" && rows[3].lines.includes("Name: “audit-subject”") && rows[3].lines.includes("Modules: commerce"), `what it was created with: ${rows[3].lines}`);
    check(rows[0].what === "Enabled" && rows[1].what === "Disabled", "enabled and disabled, in words");
    check((await page.$("#audit-complete")) && !(await page.$("#audit-compacted")), "the trail reaches the creation: no compaction note");
    check(await page.$eval("#audit-older", (b) => b.hidden), "no older page to show");
    await L.axe(page, "details: Audit trail");

    // The tabs by keyboard.
    const selected = () =>
      page.evaluate(() => {
        const tab = document.querySelector("[role=tab][aria-selected=true]");
        const panel = document.querySelector("[role=tabpanel]:not([hidden])");
        const ok = tab === document.activeElement && panel?.getAttribute("aria-labelledby") === tab.id;
        return ok ? tab.dataset.tab : `focus or panel wrong (${tab?.dataset.tab})`;
      });
    await page.focus(AUDIT_TAB);
    const steps = [["Home", "general"], ["End", "audit"], ["ArrowLeft", "details"], ["ArrowRight", "audit"], ["ArrowRight", "general"], ["ArrowLeft", "audit"]];
    for (const [key, want] of steps) {
      await page.keyboard.press(key);
      check((await selected()) === want, `${key} selects and focuses ${want}, and shows its panel`);
    }

    // Live: a change made elsewhere, then one made on this page.
    await L.cli("tokens", "update", subject.id, "--description", "Rotated by the platform team", "--module", "commerce", "--module", "billing");
    rows = await trailOf(page, 5);
    check(rows[0].type === "UPDATED" && rows[0].who === F.operator_id, "a change made with the CLI appears at the top");
    check(
      rows[0].lines.includes("Description set to “Rotated by the platform team”") && rows[0].lines.includes("Module added: billing"),
      `with what it changed: ${rows[0].lines}`,
    );
    check((await selected()) === "audit", "the focus stays on the Audit trail tab");
    await page.click("main [aria-haspopup=menu]");
    await L.chooseMenuItem(page, "Disable");
    await page.waitForSelector("dialog .btn-danger");
    await page.click("dialog .btn-danger");
    await L.toastSaying(page, "was disabled successfully.");
    rows = await trailOf(page, 6);
    check(rows[0].type === "DISABLED" && rows[0].who.includes("console-admin") && rows[0].who.includes("(you)"), `disabled on this page, by you: ${rows[0].who}`);
    // A later change arriving proves every earlier one has: none came twice.
    await L.cliAs(manager.file, "tokens", "enable", subject.id);
    rows = await trailOf(page, 7);
    check(types(rows) === "ENABLED DISABLED UPDATED ENABLED DISABLED UPDATED CREATED" && descending(rows), "each change once, newest first");
    check(reads.length === 1, `the trail was read once; live changes came from the stream (${reads.length} reads)`);
    check(await page.evaluate(() => window.__noReload === true), "all without a reload");
    check((await page.$$eval("#audit-table .badge-new", (b) => b.length)) === 3, "the three that came in while the tab was open are marked New");
    for (const b of await page.$$(".toast .icon-button")) await b.click();
    await L.shot(page, "audit-trail");
    await L.assertSecretNowhere(page, F.admin, "the audit trail");

    // More changes than a page: "Show older changes".
    await page.evaluate((h) => (location.hash = h), `#/${F.account.id}/tokens/${F.busy.id}`);
    await page.waitForFunction(() => document.querySelector("#main-heading")?.textContent === "busy-bot");
    await page.click(AUDIT_TAB);
    rows = await trailOf(page, 50);
    check(!(await page.$eval("#audit-older", (b) => b.hidden)), "50 changes, and a Show older changes button");
    check(rows[49].lines.includes("Show older changes to see what it changed."), "the oldest shown can't say what it changed yet");
    await page.focus("#audit-older");
    await page.keyboard.press("Enter");
    rows = await trailOf(page, F.busy.events);
    check(descending(rows) && rows.at(-1).type === "CREATED" && (await page.$("#audit-complete")), `all ${F.busy.events}, back to the creation`);
    check(await page.$eval("#audit-older", (b) => b.hidden), "no more older changes");
    check(rows[49].lines.includes("Description changed from “step 4” to “step 5”"), `now it can: ${rows[49].lines}`);
    check(
      await page.evaluate(() => document.activeElement?.matches("#audit-table tbody tr:nth-child(51)")),
      "the focus moves to the first older change",
    );
    await L.axe(page, "details: Audit trail, two pages");

    // Deleted: the operator still reads the trail, which ends in the
    // deletion; an account manager is told it is the operator's to read.
    await L.cli("tokens", "delete", subject.id, "--yes");
    await page.evaluate((h) => (location.hash = h), `#/${F.account.id}/tokens/${subject.id}`);
    await page.waitForSelector("#deleted-banner");
    await page.click(AUDIT_TAB);
    await page.waitForSelector("#audit-error .notice-error");
    const refused = await L.text(page, "#audit-error");
    check(refused.includes("Only an operator can read a deleted token's audit trail."), `an account manager: ${refused}`);
    const operator = await L.session(browser, "operator");
    await L.signIn(operator, F.operator, { hash: `#/${F.account.id}/tokens/${subject.id}`, expectList: false });
    await operator.waitForFunction(() => document.querySelector("#deleted-banner")?.textContent?.includes("was deleted by"));
    await operator.click(AUDIT_TAB);
    rows = await trailOf(operator, 8);
    check(rows[0].type === "DELETED" && rows[0].who.includes("(you)") && descending(rows), "the operator reads a deleted token's trail, its deletion on top");
    L.assertClean(page);
    L.assertClean(operator);
  },

  // Older changes were compacted (--retention 2): the trail says so, and
  // what the token's own record says about its creation.
  async "audit-compacted"(browser) {
    const t = F.target;
    await L.cli("tokens", "update", t.id, "--name", "ci-deploy-2");
    const record = await L.cli("tokens", "get", t.id);
    const page = await L.session(browser, "admin");
    await L.signIn(page, F.admin, { hash: `#/${F.account.id}/tokens/${t.id}`, expectList: false });
    await page.waitForSelector("#endpoint");
    await page.click(AUDIT_TAB);
    let rows = await trailOf(page, 1);
    check(rows[0].type === "UPDATED" && rows[0].lines.includes("What it changed from is beyond the retained history."), `only the rename is left: ${rows[0].lines}`);
    await page.waitForSelector("#audit-compacted");
    const note = await L.text(page, "#audit-compacted");
    check(note.includes("Earlier changes of this token are beyond the history tokend keeps"), `the note: ${note}`);
    check(note.includes(`created by ${F.operator_id} on `), "and who created it, from the token's record");
    check(Date.parse(record.audit.created.at) > 0 && /\(changes from revision \d+ on\)/.test(note), "and where the history starts");
    await L.axe(page, "details: Audit trail, compacted");
    await L.shot(page, "audit-compacted");
    // Live still: the next change compares with the one shown.
    await L.cli("tokens", "update", t.id, "--name", "ci-deploy-3");
    rows = await trailOf(page, 2);
    check(rows[0].lines.includes("Name changed from “ci-deploy-2” to “ci-deploy-3”"), "a live change compares with the one before it");

    // A token none of whose changes are left.
    await page.evaluate((h) => (location.hash = h), `#/${F.account.id}/tokens/${F.other_target.id}`);
    await page.waitForFunction((n) => document.querySelector("#main-heading")?.textContent === n, {}, F.other_target.name);
    await page.click(AUDIT_TAB);
    await page.waitForSelector("#audit-compacted");
    check((await L.text(page, "#audit-compacted")).includes("None of this token's changes are left in the history tokend keeps"), "no change left: says so");
    check(await page.$eval(".audit-wrap", (e) => e.hidden), "and shows no empty table");
    L.assertClean(page);
  },

};
