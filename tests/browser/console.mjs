// The console's scenarios in headless Chromium, one per run:
//   node tests/browser/console.mjs SCENARIO
// tests/console.rs starts tokend, makes the fixture (FIXTURE, JSON) and runs
// each scenario; changes "from elsewhere" are made with the real tokend CLI.
// Screenshots go to $ARTIFACTS; every screen visited is checked with axe-core.
// The Audit trail's scenarios are in audit.mjs.

import { readdirSync, rmSync } from "node:fs";
import { AUDIT_TAB, auditScenarios, trailOf } from "./audit.mjs";
import * as L from "./lib.mjs";

const F = JSON.parse(process.env.FIXTURE ?? "{}");
const { check, log } = L;

const scenarios = {
  // The platform's flow from the list: ••• → Delete → the dialog → Escape and
  // Cancel change nothing → Delete → confirm → message, row gone. As the
  // operator, who first picks the account.
  async "delete-from-list"(browser) {
    const page = await L.session(browser, "operator");
    await L.signIn(page, F.operator);
    check(await page.evaluate(() => document.activeElement?.id === "main-heading"), "signing in leaves focus on the page's heading");
    check(await page.$("#account-picker"), "the operator gets an account picker");
    // An account made elsewhere after sign-in, opened by its URL: the
    // picker learns of it and shows it, not another account.
    const made = await L.cli("accounts", "create", "--name", "Globex", "--type", "client", "--module", "commerce");
    await page.goto(`${L.URL_}/#/${made.id}/tokens`, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(
      (id) => document.querySelector("#account-picker")?.selectedOptions[0]?.textContent === `Globex (${id})`,
      {},
      made.id,
    );
    check(true, "the picker shows an account made after sign-in");
    await page.focus("#account-picker");
    await page.select("#account-picker", F.account.id);
    await page.waitForFunction((h) => location.hash === h, {}, `#/${F.account.id}/tokens`);
    await L.listReady(page);
    check(await page.evaluate(() => document.activeElement?.id === "account-picker"), "the picker keeps focus after a choice");
    await L.waitRow(page, F.target.id);
    await L.shot(page, "delete-1-list");
    await L.axe(page, "token list");
    const t = F.target;

    // Escape cancels; so does Cancel. Neither deletes.
    await L.rowAction(page, t.id, "Delete");
    await page.waitForSelector("#delete-confirm:not([disabled])");
    const dialog = await L.text(page, "#delete-dialog");
    check(dialog.includes("Delete API token"), "the dialog is titled Delete API token");
    check(dialog.includes(t.name) && dialog.includes(t.id), "the dialog names the token and its id");
    check(dialog.includes("A deleted token can't be restored or reused."), "the dialog warns it can't be restored or reused");
    await L.shot(page, "delete-2-dialog");
    await L.axe(page, "delete dialog");
    // Focus stays inside the dialog.
    for (let i = 0; i < 6; i++) await page.keyboard.press("Tab");
    check(await page.evaluate(() => document.activeElement?.closest("dialog") !== null), "Tab keeps focus inside the dialog");
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => !document.querySelector("#delete-dialog"));
    check(await L.hasRow(page, t.id), "Escape closes the dialog and the row stays");
    check(
      await page.evaluate((id) => document.activeElement?.closest(`tr[data-token-id="${id}"]`) !== null, t.id),
      "focus returns to the row's ••• button",
    );

    await L.rowAction(page, t.id, "Delete");
    await page.waitForSelector("#delete-confirm:not([disabled])");
    await page.click("#delete-cancel");
    await page.waitForFunction(() => !document.querySelector("#delete-dialog"));
    check(await L.hasRow(page, t.id), "Cancel leaves the row");
    check((await L.cliCode("tokens", "get", t.id)) === 0, "Cancel leaves the token (tokend still has it)");

    await L.rowAction(page, t.id, "Delete");
    await page.waitForSelector("#delete-confirm:not([disabled])");
    await page.click("#delete-confirm");
    const msg = await L.toastSaying(page, "was deleted successfully");
    check(msg.includes(`API token '${t.name}' (${t.id}) was deleted successfully.`), `the success message: ${msg}`);
    await L.waitRowGone(page, t.id);
    check(!(await L.hasRow(page, t.id)), "the row is gone");
    await L.shot(page, "delete-3-deleted");
    check((await L.cliCode("tokens", "get", t.id)) === 3, "tokend says the token is not found");
    L.assertClean(page);
  },

  // From the details page: Disable, Enable and Edit (each confirmed, each
  // with its message), then the Actions dropdown → Delete → back to the list.
  async "delete-from-details"(browser) {
    const page = await L.session(browser, "admin");
    await L.signIn(page, F.admin);
    const t = F.target;
    await L.listReady(page);
    // Signing in verified the admin's secret: the list (from the watch's
    // snapshot) shows when, not "Never".
    const lastAccess = await page.$eval(`${L.rowSel(F.admin_id)}`, (tr) => tr.children[5].textContent);
    check(lastAccess !== "Never" && lastAccess.trim() !== "", `the signed-in token's last access is shown: ${lastAccess}`);
    // Deleting the token one is signed in with is said before it happens.
    await L.rowAction(page, F.admin_id, "Delete");
    await page.waitForSelector("#delete-confirm:not([disabled])");
    const own = await L.text(page, "#delete-dialog");
    check(own.includes("This is the token you signed in with.") && own.includes("signed out at once"), "deleting one's own token is warned of");
    await page.click("#delete-cancel");
    await page.waitForFunction(() => !document.querySelector("#delete-dialog"));
    await page.click(`${L.rowSel(t.id)} a.token-name`);
    await page.waitForFunction((id) => location.hash.endsWith(`/tokens/${id}`), {}, t.id);
    await page.waitForSelector("#endpoint");
    const general = await L.text(page, "main");
    check(general.includes(t.id) && general.includes("Active") && general.includes("commerce"), "General shows id, status and modules");
    check((await page.$eval("#endpoint", (e) => e.value)) === L.URL_, "General shows the API endpoint");
    await L.shot(page, "details-general");
    await L.axe(page, "details: General");
    await page.click("[role=tab]:nth-child(2)");
    const details = await L.text(page, "[role=tabpanel]:not([hidden])");
    check(details.includes("Created") && details.includes("by") && details.includes("Last access"), "Details shows created by whom and last access");
    await L.axe(page, "details: Details");

    const actions = "main [aria-haspopup=menu]";
    // Disable, confirmed.
    await page.click(actions);
    await L.chooseMenuItem(page, "Disable");
    await page.waitForSelector("dialog");
    check((await L.text(page, "dialog")).includes(t.id), "the disable dialog names the token");
    check(!(await page.$("#own-token-warning")), "another token's dialog has no own-token warning");
    await L.axe(page, "disable dialog");
    await page.click("dialog .btn-danger");
    await L.toastSaying(page, `API token '${t.name}' (${t.id}) was disabled successfully.`);
    await page.waitForFunction(() => document.querySelector(".details-head .badge")?.textContent === "Disabled");
    check(true, "disabled: message and status");
    // Enable, confirmed.
    await page.click(actions);
    await L.chooseMenuItem(page, "Enable");
    await page.waitForSelector("dialog .btn-primary");
    await page.click("dialog .btn-primary");
    await L.toastSaying(page, "was enabled successfully.");
    await page.waitForFunction(() => document.querySelector(".details-head .badge")?.textContent === "Active");
    check(true, "enabled: message and status");
    // Edit.
    await page.click(actions);
    await L.chooseMenuItem(page, "Edit");
    await page.waitForSelector("dialog textarea");
    await L.axe(page, "edit dialog");
    // A value only tokend refuses (the page's own check lets it through) is
    // said beside its field, which gets focus; nothing at the dialog's foot.
    const logo = "dialog input[type=url]";
    await page.$eval(logo, (e) => (e.value = 'https://example.com/"quoted".png'));
    await page.click("dialog .btn-primary");
    await page.waitForSelector(`${logo}[aria-invalid=true]`);
    const logoError = await page.$eval(logo, (e) => document.getElementById(`${e.id}-error`).textContent);
    check(logoError.startsWith("Must be an http or https URL"), `tokend's refusal is beside the logo field: ${logoError}`);
    check(await page.$eval(logo, (e) => document.activeElement === e), "the refused field has focus");
    check(await page.$eval("dialog .notice-error", (e) => e.hidden), "no dialog-level error for a field's refusal");
    await page.$eval(logo, (e) => (e.value = ""));
    await page.$eval("dialog textarea", (e) => (e.value = ""));
    await page.type("dialog textarea", "Edited in the console");
    await page.click("dialog .btn-primary");
    await L.toastSaying(page, "was updated successfully.");
    const got = await L.cli("tokens", "get", t.id);
    check(got.description === "Edited in the console", "Edit saved the description");
    // A change made elsewhere shows at once and leaves the keyboard focus on
    // the Actions button (the head is updated in place, not rebuilt).
    await page.focus(actions);
    await L.cli("tokens", "update", t.id, "--description", "Changed elsewhere");
    await page.waitForFunction(() => document.querySelector("main").textContent.includes("Changed elsewhere"));
    check(await page.$eval(actions, (b) => document.activeElement === b), "a live change keeps the focus on the Actions button");

    // Delete from the dropdown.
    await page.click(actions);
    await L.chooseMenuItem(page, "Delete");
    await page.waitForSelector("#delete-confirm:not([disabled])");
    await L.shot(page, "details-delete-dialog");
    await page.click("#delete-confirm");
    await L.toastSaying(page, `API token '${t.name}' (${t.id}) was deleted successfully.`);
    await page.waitForFunction((a) => location.hash === `#/${a}/tokens`, {}, F.account.id);
    await L.listReady(page);
    check(!(await L.hasRow(page, t.id)), "back on the list, without the row");
    check((await L.cliCode("tokens", "get", t.id)) === 3, "tokend says the token is not found");
    L.assertClean(page);
  },

  // Someone renames the token while the dialog is open: the page hears it,
  // Confirm (with the etag the dialog showed) deletes nothing and says what
  // changed.
  async "changed-in-between"(browser) {
    const page = await L.session(browser, "admin");
    await L.signIn(page, F.admin);
    const t = F.target;
    await L.rowAction(page, t.id, "Delete");
    await page.waitForSelector("#delete-confirm:not([disabled])");
    await L.cli("tokens", "update", t.id, "--name", "renamed-meanwhile");
    await page.waitForSelector("#delete-changed");
    check((await L.text(page, "#delete-changed")).includes("changed after this dialog opened"), "the dialog hears the change live");
    await page.click("#delete-confirm");
    await page.waitForFunction(() => document.querySelector("#delete-changed")?.textContent?.includes("so nothing was deleted"));
    const changed = await L.text(page, "#delete-changed");
    check(changed.includes(t.name) && changed.includes("renamed-meanwhile"), `the dialog shows what changed: ${changed}`);
    await L.shot(page, "delete-4-changed");
    await L.axe(page, "delete dialog: changed");
    const still = await L.cli("tokens", "get", t.id);
    check(still.status === "ACTIVE" && still.name === "renamed-meanwhile", "nothing was deleted");
    await page.click("#delete-cancel");
    await page.waitForFunction(() => !document.querySelector("#delete-dialog"));
    check(await L.hasRow(page, t.id), "the row stays, renamed");
    L.assertClean(page);
  },

  // General (with an expiry) → Modules (only the account's) → Overview →
  // Add → the secret, once: after Done it is nowhere in the page.
  async "add-wizard"(browser) {
    const page = await L.session(browser, "admin");
    await L.signIn(page, F.admin);
    await page.click("#add-token");
    await page.waitForSelector("#add-token-dialog");
    await L.axe(page, "add: General");
    await page.click("#wizard-next");
    await page.waitForSelector("#add-token-dialog .field-error:not([hidden])");
    check((await L.text(page, "#add-token-dialog")).includes("Enter a name."), "a name is required");
    const [logo, name, desc] = await page.$$("#add-token-dialog input, #add-token-dialog textarea");
    // A logo only tokend refuses (the page's own check lets it through).
    await logo.type('https://example.com/"quoted".png');
    await name.type("deploy-bot");
    await desc.type("Deploys from the console's test");
    await page.select("#expires", "30");
    await page.click("#wizard-next");
    await page.waitForSelector("#add-token-dialog input[type=checkbox]");
    const offered = await page.$$eval("#add-token-dialog input[type=checkbox]", (bs) => bs.map((b) => b.value));
    check(JSON.stringify(offered) === JSON.stringify([...F.account.modules].sort()), `Modules offers exactly the account's: ${offered}`);
    await L.axe(page, "add: Modules");
    await page.click('#add-token-dialog input[value="commerce"]');
    await page.click("#wizard-next");
    await page.waitForSelector("#add-token-dialog .overview");
    await page.click("#wizard-next");
    // tokend's refusal takes the wizard back to General, beside the field.
    const badLogo = "#add-token-dialog input[type=url][aria-invalid=true]";
    await page.waitForSelector(badLogo);
    const logoError = await page.$eval(badLogo, (e) => document.getElementById(`${e.id}-error`).textContent);
    check(logoError.startsWith("Must be an http or https URL"), `tokend's refusal is beside the logo, on General: ${logoError}`);
    check(await page.$eval(badLogo, (e) => document.activeElement === e), "the refused field has focus");
    check(await page.$eval("#add-token-dialog .notice-error", (e) => e.hidden), "no error at the dialog's foot for a field's refusal");
    await page.$eval(badLogo, (e) => (e.value = ""));
    await page.type("#add-token-dialog input[type=url]", "https://example.com/logo.png");
    await page.click("#wizard-next");
    await page.waitForSelector('#add-token-dialog input[value="commerce"]:checked');
    check(true, "the modules picked are kept");
    await page.click("#wizard-next");
    await page.waitForSelector("#add-token-dialog .overview");
    const overview = await L.text(page, "#add-token-dialog .overview");
    check(overview.includes("deploy-bot") && overview.includes("commerce") && overview.includes("https://example.com/logo.png"), "Overview shows what will be added");
    check(overview.includes("In 30 days"), "Overview shows when it expires");
    await L.shot(page, "add-overview");
    await L.axe(page, "add: Overview");
    await page.click("#wizard-next");
    await page.waitForSelector("#new-secret");
    const secret = await page.$eval("#new-secret", (e) => e.value);
    check(/^idt:TKN-\d{4}-\d{4}:[0-9A-Za-z]{46}$/.test(secret), "the secret is shown");
    check((await L.text(page, "#add-token-dialog")).includes("It can't be shown again"), "with a warning that it can't be shown again");
    // In the page's markup, or as the value of a field (which markup omits).
    const occurrences = await page.evaluate(
      (s) =>
        document.documentElement.outerHTML.split(s).length - 1 +
        [...document.querySelectorAll("input, textarea")].filter((i) => i.value.includes(s)).length,
      secret,
    );
    check(occurrences === 1, `the secret is on the page exactly once (${occurrences})`);
    await L.shot(page, "add-secret");
    await L.axe(page, "add: secret");
    await page.click("#copy-secret");
    await page.waitForFunction(() => document.querySelector("#add-token-dialog .copied")?.textContent !== "");
    const verified = await L.cli("tokens", "verify", secret);
    check(verified.valid === true, "the secret shown verifies");
    const id = secret.slice(4, 17);
    // Escape (twice, as an impatient user would) does not put the secret away.
    await page.keyboard.press("Escape");
    await page.keyboard.press("Escape");
    check(!(await L.goneWithin(page, "#add-token-dialog", 1000)), "Escape leaves the secret on screen: only Done closes");
    await page.click("#wizard-done");
    await page.waitForFunction(() => !document.querySelector("#add-token-dialog"));
    await L.assertSecretNowhere(page, secret, "after Done");
    await L.waitRow(page, id);
    check((await L.text(page, L.rowSel(id))).includes("deploy-bot"), "the new token is listed");
    await page.click(`${L.rowSel(id)} a.token-name`);
    await page.waitForSelector("#endpoint");
    await L.assertSecretNowhere(page, secret, "on its details page");
    check(true, "the secret is shown exactly once");
    process.stdout.write(`RESULT ${JSON.stringify({ created: id })}\n`);
    L.assertClean(page);
  },

  // ••• → Roll: the dialog asks how long the old secret keeps working (1
  // hour), then shows the new secret once and when the old one stops. Both
  // tokens are listed; the old one can't be rolled again.
  async roll(browser) {
    const page = await L.session(browser, "admin");
    await L.signIn(page, F.admin);
    await L.listReady(page);
    const t = F.target;
    await L.rowAction(page, t.id, "Roll");
    await page.waitForSelector("#roll-dialog #roll-grace");
    const dialog = await L.text(page, "#roll-dialog");
    check(dialog.includes("Roll API token") && dialog.includes(t.name) && dialog.includes(t.id), "the dialog names the token");
    check(dialog.includes("same name, description, logo and modules"), "the dialog says what the new token keeps");
    await L.shot(page, "roll-1-dialog");
    await L.axe(page, "roll dialog");
    await page.select("#roll-grace", "3600");
    await page.click("#roll-confirm");
    await page.waitForSelector("#new-secret");
    const secret = await page.$eval("#new-secret", (e) => e.value);
    check(/^idt:TKN-\d{4}-\d{4}:[0-9A-Za-z]{46}$/.test(secret), "the new secret is shown");
    const fate = await L.text(page, "#roll-old-fate");
    check(fate.startsWith("The old secret keeps working until"), `the dialog says when the old one stops: ${fate}`);
    await L.shot(page, "roll-2-secret");
    await L.axe(page, "roll: secret");
    const verified = await L.cli("tokens", "verify", secret);
    check(verified.valid === true, "the new secret verifies");
    const id = secret.slice(4, 17);
    await page.keyboard.press("Escape");
    await page.keyboard.press("Escape");
    check(!(await L.goneWithin(page, "#roll-dialog", 1000)), "Escape leaves the new secret on screen: only Done closes");
    await page.click("#roll-done");
    await page.waitForFunction(() => !document.querySelector("#roll-dialog"));
    await L.assertSecretNowhere(page, secret, "after Done");
    await L.waitRow(page, id);
    check(await L.hasRow(page, t.id), "the old token is still listed during its grace");
    const oldStatus = await L.text(page, `${L.rowSel(t.id)} .replaced`);
    check(oldStatus.startsWith(`Replaced by ${id}, works until `), `the old row says it was replaced, by which, until when: ${oldStatus}`);
    check(!(await page.$(`${L.rowSel(id)} .replaced`)), "the successor's row does not");
    await L.shot(page, "roll-3-list");
    await page.click(`${L.rowSel(t.id)} [aria-haspopup=menu]`);
    await page.waitForSelector(".menu:not([hidden]) [role=menuitem]");
    const items = await page.$$eval(".menu:not([hidden]) [role=menuitem]", (els) => els.map((e) => e.textContent));
    check(!items.includes("Roll"), `a replaced token offers no Roll: ${items}`);
    await page.keyboard.press("Escape");
    process.stdout.write(`RESULT ${JSON.stringify({ successor: id, old: t.id })}\n`);
    L.assertClean(page);
  },

  // Changes made with the CLI reach open pages of other browser sessions
  // without a reload: a delete removes the row, tells an open details page
  // and an open delete dialog who deleted it and when; a create and a
  // disable show up too.
  async "live"(browser) {
    const list = await L.session(browser, "list");
    const details = await L.session(browser, "details");
    await L.signIn(list, F.admin);
    await L.signIn(details, F.admin, { hash: `#/${F.account.id}/tokens/${F.target.id}`, expectList: false });
    await details.waitForSelector("#endpoint");
    await list.evaluate(() => (window.__noReload = true));
    await L.rowAction(list, F.other_target.id, "Delete");
    await list.waitForSelector("#delete-confirm:not([disabled])");

    await L.cli("tokens", "delete", F.target.id, "--yes");
    await L.waitRowGone(list, F.target.id);
    check(true, "a token deleted with `tokend tokens delete` disappears from another session's list");
    await details.waitForSelector("#deleted-banner");
    const banner = await L.text(details, "#deleted-banner");
    check(banner.includes(`deleted by ${F.operator_id}`) && / on /.test(banner), `the open details page says who deleted it and when: ${banner}`);
    await L.shot(details, "live-details-deleted");
    await L.axe(details, "details: deleted elsewhere");

    await L.cli("tokens", "delete", F.other_target.id, "--yes");
    await list.waitForSelector("#delete-gone");
    const gone = await L.text(list, "#delete-gone");
    check(gone.includes(`deleted meanwhile, by ${F.operator_id} on `), `the open delete dialog says who deleted it and when: ${gone}`);
    check(await list.$eval("#delete-confirm", (b) => b.hidden), "and offers no Delete");
    await L.shot(list, "live-dialog-deleted");
    await list.click("#delete-cancel");
    await L.waitRowGone(list, F.other_target.id);

    const created = await L.cli("tokens", "create", "--account", F.account.id, "--name", "made-by-cli", "--module", "commerce");
    await L.waitRow(list, created.token.id);
    check(true, "a token created with the CLI appears");
    // Its ••• menu is open when someone disables it: the menu then offers
    // what applies now (Enable, not Disable).
    await list.click(`${L.rowSel(created.token.id)} [aria-haspopup=menu]`);
    const offered = () => list.$$eval(".menu:not([hidden]) [role=menuitem]", (els) => els.map((e) => e.textContent));
    check((await offered()).includes("Disable"), "an active token's open menu offers Disable");
    await L.cli("tokens", "disable", created.token.id);
    await list.waitForFunction((sel) => document.querySelector(`${sel} .badge`)?.textContent === "Disabled", {}, L.rowSel(created.token.id));
    check(true, "a token disabled with the CLI shows as disabled");
    const now = await offered();
    check(now.includes("Enable") && !now.includes("Disable"), `and its open menu now offers Enable: ${now}`);
    check(await list.evaluate(() => document.activeElement?.getAttribute("role") === "menuitem"), "the focus stays in the open menu");
    await list.keyboard.press("Escape");
    // The row is updated in place: the keyboard focus on its name stays.
    const name = `${L.rowSel(created.token.id)} a.token-name`;
    await list.focus(name);
    await L.cli("tokens", "update", created.token.id, "--name", "renamed-by-cli", "--description", "now described");
    await list.waitForFunction((sel) => document.querySelector(sel)?.textContent === "renamed-by-cli", {}, name);
    check((await L.text(list, `${L.rowSel(created.token.id)} .token-description`)) === "now described", "a change made with the CLI shows in the row");
    check(await list.$eval(name, (a) => document.activeElement === a), "and the focus stays on the row's name");
    check(await list.evaluate(() => window.__noReload === true), "all without a reload");
    L.assertClean(list);
    L.assertClean(details);
  },

  // Who may see what: a malformed or wrong secret, a token without
  // access-management, and another account's tokens; sign-out forgets; a
  // credential revoked mid-session signs the page out.
  async "access"(browser) {
    const page = await L.session(browser, "visitor");
    await page.goto(`${L.URL_}/`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("#secret");
    await L.shot(page, "sign-in");
    await L.axe(page, "sign-in");
    await page.type("#secret", "not-a-secret");
    await page.click("form.signin button[type=submit]");
    await page.waitForSelector("#secret-error:not([hidden])");
    check((await L.text(page, "#secret-error")).includes("not a token secret"), "a malformed secret is refused before sending");
    await page.$eval("#secret", (e) => (e.value = ""));
    await page.type("#secret", F.wrong);
    await page.click("form.signin button[type=submit]");
    await page.waitForFunction(() => document.querySelector("#secret-error")?.textContent?.includes("was not accepted"));
    check(true, "a wrong secret: a clear message");
    await L.axe(page, "sign-in: error");

    // A token without access-management sees no tokens.
    await page.$eval("#secret", (e) => (e.value = ""));
    await page.type("#secret", F.commerce_only);
    await page.click("form.signin button[type=submit]");
    await page.waitForSelector(".notice-warning");
    check((await L.text(page, "main")).includes("doesn't have the access-management module"), "a token without access-management is told it can't manage tokens");
    check((await page.$("#tokens-table")) === null, "and sees no token list");
    await L.axe(page, "no access");
    await page.reload({ waitUntil: "domcontentloaded" });
    await page.waitForSelector("#secret");
    check(true, "a reload forgets the secret (memory only)");

    // An access-management token: its own account only.
    await L.signIn(page, F.admin);
    await L.assertSecretNowhere(page, F.admin, "signed in");
    await page.evaluate((a) => (location.hash = `#/${a}/tokens`), F.other.id);
    // Wait for this page's error, not any notice: under load the previous
    // page's can still be on screen for a moment.
    const notFound = await page
      .waitForFunction(() => [...document.querySelectorAll(".notice-error")].some((n) => n.textContent.includes("doesn't exist, or you can't see it")), { timeout: 15000 })
      .then(() => true, () => false);
    check(notFound, `another account's list: not found (notices: ${JSON.stringify(await page.$$eval(".notice-error", (ns) => ns.map((n) => n.textContent)))})`);
    check(!(await L.text(page, "main")).includes(F.other.token.name), "none of its tokens is shown");
    await L.axe(page, "other account");
    await page.evaluate((a, t) => (location.hash = `#/${a}/tokens/${t}`), F.other.id, F.other.token.id);
    await page.waitForFunction(() => document.querySelector("main")?.textContent?.includes("can't see it"));
    check(!(await L.visible(page, "main [aria-haspopup=menu]")), "another account's token: no actions");
    await page.evaluate((a, t) => (location.hash = `#/${a}/tokens/${t}`), F.account.id, F.other.token.id);
    await page.waitForSelector("#deleted-banner");
    check(!(await L.visible(page, "main [aria-haspopup=menu]")), "another account's token under this account's URL: not found, no actions");

    // Sign out forgets.
    await page.click("#sign-out");
    await page.waitForSelector("#secret");
    await L.assertSecretNowhere(page, F.admin, "signed out");
    await page.goBack();
    await page.waitForSelector("#secret");
    check(true, "Back after sign-out shows the sign-in, not the tokens");

    // Revoked mid-session: the page signs out and says why.
    await L.signIn(page, F.admin);
    await L.cli("tokens", "disable", F.admin_id);
    await page.waitForSelector("#secret");
    await L.toastSaying(page, "was disabled or deleted, so you have been signed out");
    check(true, "a credential disabled mid-session signs the page out");
    L.assertClean(page);
  },

  // tokend restarts under an open page: the page resumes from the revision
  // after the last one it saw and misses nothing. The second time, more
  // changes happen while it is away than tokend keeps (--retention 3, on
  // sled): the resume is OUT_OF_RANGE / REVISION_COMPACTED and the page
  // lists again.
  async "resume"(browser) {
    const page = await L.session(browser, "admin");
    await L.signIn(page, F.admin);
    const snapshots = () => page.$eval("#live-state", (e) => Number(e.dataset.snapshots));
    check((await snapshots()) === 1, "one snapshot to start with");

    // Drop 1: one change while the page is away.
    await L.restartTokend(page, async () => {
      await L.shot(page, "resume-away");
      await L.cli("tokens", "delete", F.target.id, "--yes");
    });
    await L.shot(page, "resume-back");
    await L.waitRowGone(page, F.target.id);
    await L.listReady(page);
    check((await snapshots()) === 1, "resumed from the next revision: the delete arrived, no new snapshot");

    // Drop 2: more changes than tokend keeps.
    let created;
    await L.restartTokend(page, async () => {
      created = await L.cli("tokens", "create", "--account", F.account.id, "--name", "while-away", "--module", "commerce");
      await L.cli("tokens", "update", F.other_target.id, "--name", "renamed-while-away");
      await L.cli("tokens", "disable", created.token.id);
      await L.cli("tokens", "update", created.token.id, "--description", "changed while away");
    });
    await L.waitRow(page, created.token.id);
    await page.waitForFunction(
      (sel) => document.querySelector(`${sel} .badge`)?.textContent === "Disabled",
      {},
      L.rowSel(created.token.id),
    );
    await page.waitForFunction(
      (sel) => document.querySelector(sel)?.textContent?.includes("renamed-while-away"),
      {},
      L.rowSel(F.other_target.id),
    );
    check(true, "every change made while the page was away is shown");
    if (process.env.TOKEND_TEST_ETCD) {
      log("on etcd, --retention has no effect: the resume did not need a re-list");
    } else {
      check((await snapshots()) === 2, "the history was compacted: the page listed again (a second snapshot)");
    }
    // The browser logs each refused reconnect while tokend is down, and
    // each one tried while it was kept offline.
    L.assertClean(page, /net::ERR_(CONNECTION_REFUSED|INTERNET_DISCONNECTED)/);
  },

  // Status filter, name search and pages, over a list that keeps changing.
  async "filters"(browser) {
    const page = await L.session(browser, "admin");
    for (let i = 1; i <= 11; i++) {
      await L.cli("tokens", "create", "--account", F.account.id, "--name", `batch-${String(i).padStart(2, "0")}`, "--module", "commerce");
    }
    await L.cli("tokens", "disable", F.other_target.id);
    await L.signIn(page, F.admin);
    const range = () => L.text(page, "#page-range");
    const rows = () => page.$$eval("tr[data-token-id]", (rs) => rs.length);
    check((await range()) === "1–10 of 15" && (await rows()) === 10, "the first page: 10 of 15");
    await page.click("#next-page");
    check((await range()) === "11–15 of 15" && (await rows()) === 5, "Next: the last 5");
    check(await page.$eval("#next-page", (b) => b.disabled), "no page after the last");
    await page.select("#page-size", "25");
    check((await range()) === "1–15 of 15", "25 per page: all on one");
    await page.type("#search", "BATCH-1");
    check((await rows()) === 2, "search by name, ignoring case (batch-10, batch-11)");
    await page.$eval("#search", (e) => {
      e.value = "";
      e.dispatchEvent(new Event("input"));
    });
    await page.select("#status-filter", "disabled");
    const shown = await page.$$eval("tr[data-token-id]", (rs) => rs.map((r) => r.dataset.tokenId));
    check(shown.length === 1 && shown[0] === F.other_target.id, "status Disabled: only the disabled token");
    await L.cli("tokens", "enable", F.other_target.id);
    await page.waitForFunction(() => document.querySelector(".empty:not([hidden])")?.textContent?.includes("No API tokens match"));
    check(true, "enabled elsewhere, it leaves the Disabled view");
    await L.axe(page, "list: filtered to nothing");
    await page.select("#status-filter", "active");
    check((await rows()) === 15, "status Active: all 15");
    L.assertClean(page);
  },

  // A narrow window (a phone): the list as cards, the dialog fits.
  async "narrow"(browser) {
    const page = await L.session(browser, "phone", { width: 390, height: 844, isMobile: true, hasTouch: true });
    await L.signIn(page, F.admin);
    await L.shot(page, "narrow-list");
    await L.axe(page, "narrow: list");
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `nothing wider than the window (${overflow}px over)`);
    await L.rowAction(page, F.target.id, "Delete");
    await page.waitForSelector("#delete-confirm:not([disabled])");
    await L.shot(page, "narrow-delete-dialog");
    const fits = await page.$eval("#delete-dialog", (d) => d.getBoundingClientRect().width <= window.innerWidth);
    check(fits, "the dialog fits the window");
    await page.click("#delete-cancel");
    await page.waitForFunction(() => !document.querySelector("#delete-dialog"));
    await page.click(`${L.rowSel(F.target.id)} a.token-name`);
    await page.waitForSelector(AUDIT_TAB);
    await page.click(AUDIT_TAB);
    await trailOf(page, 1);
    await L.shot(page, "narrow-audit");
    await L.axe(page, "narrow: audit trail");
    const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(wide <= 0, `the audit trail fits the window too (${wide}px over)`);
    L.assertClean(page);
  },

  ...auditScenarios,
};

const name = process.argv[2];
const scenario = scenarios[name];
if (!scenario) {
  console.error(`unknown scenario ${name}; one of: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
for (const f of readdirSync(L.ARTIFACTS)) if (f.startsWith(`failure-${name}-`)) rmSync(`${L.ARTIFACTS}/${f}`);
const browser = await L.launch();
let failed = false;
try {
  await scenario(browser);
  log(`PASS ${name}`);
} catch (e) {
  failed = true;
  console.error(`FAIL ${name}: ${e.stack ?? e}`);
  for (const [i, p] of (await browser.pages()).entries()) {
    await p.screenshot({ path: `${L.ARTIFACTS}/failure-${name}-${i}.png` }).catch(() => undefined);
  }
} finally {
  await browser.close().catch(() => undefined);
  L.cleanup();
}
process.exit(failed ? 1 : 0);
