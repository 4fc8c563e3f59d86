// What can be done to a token, from its row's ••• menu or its details
// page's Actions dropdown: Edit, Disable or Enable (each confirmed), Roll
// (views/roll.ts) and Delete (the platform's "Delete API token" dialog).

import { sessionSignal, tokens } from "../api";
import type { App } from "../app";
import { fill, formatTime, h } from "../dom";
import { failure, isSignedOut, type Failure } from "../errors";
import { TokenStatus, type Token } from "../gen/apitokens/v1/tokens_pb";
import { button, modal, STATUS_LABEL, toast, type MenuItem } from "../ui";
import { rollDialog } from "./roll";
import { tokenFields } from "./wizard";

export interface ActionHooks {
  /** After this page deleted the token (the details page goes back to the list). */
  onDeleted: () => void;
}

export function tokenActions(app: App, t: Token, hooks: ActionHooks): MenuItem[] {
  const active = t.status === TokenStatus.ACTIVE;
  return [
    { label: "Edit", run: () => editDialog(app, t) },
    active
      ? { label: "Disable", run: () => statusDialog(app, t, "disable") }
      : { label: "Enable", run: () => statusDialog(app, t, "enable") },
    // A disabled or already replaced token can't be rolled.
    active && !t.replacedBy ? { label: "Roll", run: () => rollDialog(app, t) } : null,
    { label: "Delete", danger: true, run: () => deleteDialog(app, t, hooks) },
  ].filter((item): item is MenuItem => item !== null);
}

/** A failed write: signs out when the credential went bad, else says why. */
function report(app: App, f: Failure, where: HTMLElement): void {
  if (isSignedOut(f)) {
    app.signedOutBy(f);
    return;
  }
  fill(where, f.sentence);
  where.hidden = false;
}

/**
 * A warning for a dialog about to end the session's own credential: the
 * page signs out at once, and with the last operator token gone no one can
 * sign in as operator until tokend is restarted without its credential file
 * (README, "Locked out?").
 */
function ownTokenWarning(app: App, t: Token): HTMLElement | null {
  const s = app.session;
  if (!s || s.self.id !== t.id) return null;
  return h(
    "p",
    { class: "notice notice-warning", id: "own-token-warning" },
    h("strong", {}, "This is the token you signed in with."),
    s.operator
      ? " You will be signed out at once. If it is the last operator token, no one can sign in as operator until tokend is restarted without its credential file."
      : " You will be signed out at once.",
  );
}

/** A paragraph for errors inside a dialog, read out when it appears. */
function dialogError(): HTMLElement {
  return h("p", { class: "notice notice-error", role: "alert", hidden: true });
}

// ------------------------------------------------------ disable / enable

export function statusDialog(app: App, t: Token, what: "disable" | "enable"): void {
  const title = what === "disable" ? "Disable API token" : "Enable API token";
  const error = dialogError();
  const m = modal(title);
  fill(
    m.body,
    h(
      "p",
      {},
      `${what === "disable" ? "Disable" : "Enable"} API token `,
      h("strong", {}, t.name),
      ` (${t.id})?`,
    ),
    h(
      "p",
      {},
      what === "disable"
        ? "A disabled token stops working at once: calls made with it are refused until it is enabled again."
        : "The token works again at once for calls to the modules it holds.",
    ),
    what === "disable" ? ownTokenWarning(app, t) : null,
    error,
  );
  const cancel = button("Cancel", () => m.close());
  const confirm = button(what === "disable" ? "Disable" : "Enable", async () => {
    confirm.disabled = true;
    error.hidden = true;
    try {
      const req = { id: t.id, etag: t.etag };
      const opts = { signal: sessionSignal() };
      const next = what === "disable" ? await tokens.disableToken(req, opts) : await tokens.enableToken(req, opts);
      app.live?.applyLocal(next);
      m.close();
      toast(`API token '${next.name}' (${next.id}) was ${what}d successfully.`);
    } catch (err) {
      confirm.disabled = false;
      report(app, failure(err), error);
    }
  }, what === "disable" ? "danger" : "primary");
  m.footer.append(cancel, confirm);
  cancel.focus();
}

// ------------------------------------------------------------------ edit

export function editDialog(app: App, t: Token): void {
  const error = dialogError();
  const m = modal("Edit API token", { wide: true });
  const modules = accountModules(app, t);
  const fields = tokenFields({ name: t.name, description: t.description, icon: t.icon, modules: t.modules }, modules);
  fill(m.body, h("p", { class: "muted" }, `${t.id}`), fields.general, fields.modules, error);
  const cancel = button("Cancel", () => m.close());
  const save = button("Save", async () => {
    // A refusal shown for an earlier try no longer applies.
    error.hidden = true;
    const v = fields.read();
    if (!v) return;
    save.disabled = true;
    try {
      const next = await tokens.updateToken(
        {
          token: { id: t.id, name: v.name, description: v.description, icon: v.icon, modules: v.modules },
          updateMask: { paths: ["name", "description", "icon", "modules"] },
          etag: t.etag,
        },
        { signal: sessionSignal() },
      );
      app.live?.applyLocal(next);
      m.close();
      toast(`API token '${next.name}' (${next.id}) was updated successfully.`);
    } catch (err) {
      save.disabled = false;
      const f = failure(err);
      if (!fields.showRefusal(f)) report(app, f, error);
    }
  }, "primary");
  m.footer.append(cancel, save);
  fields.focus();
}

/** The modules a token of this account may hold (the account's own). */
export function accountModules(app: App, t?: Token): string[] {
  const acc = app.account;
  const set = new Set(acc ? acc.modules : []);
  for (const m of t?.modules ?? []) set.add(m);
  return [...set].sort();
}

// ---------------------------------------------------------------- delete

/**
 * The platform's "Delete API token" dialog. Opening it asks tokend what
 * would be deleted (`validate_only`), which also gives the etag; Confirm
 * deletes with that etag, so a token changed in between is not deleted:
 * the dialog then shows what changed. A token someone else deleted while the
 * dialog is open is named with who deleted it and when.
 */
export function deleteDialog(app: App, t: Token, hooks: ActionHooks): void {
  const live = app.live;
  const error = dialogError();
  const status = h("div", { class: "dialog-status", "aria-live": "polite" });
  const m = modal("Delete API token", {
    onCancel: () => !busy,
  });
  m.dialog.id = "delete-dialog";
  m.dialog.dataset.tokenId = t.id;
  let busy = false;
  /** The token as this dialog shows it, and the etag a Confirm deletes with. */
  let shown: Token = t;

  const question = h("p", { class: "delete-question" });
  const renderQuestion = () =>
    fill(question, "Are you sure you want to delete the API token ", h("strong", { class: "delete-name" }, shown.name), " (", h("span", { class: "mono delete-id" }, shown.id), ")?");
  renderQuestion();
  const warnings = h(
    "ul",
    { class: "warning-list" },
    h("li", {}, "A deleted token can't be restored or reused."),
    h("li", {}, "Deleting a token removes it from the account, and it no longer appears on the API tokens page. Applications that use it stop working at once."),
  );
  fill(m.body, question, warnings, ownTokenWarning(app, t), status, error);
  const cancel = button("Cancel", () => m.close(), "secondary", { id: "delete-cancel" });
  const confirm = button("Delete", () => void doDelete(), "danger", { id: "delete-confirm", disabled: "" });
  m.footer.append(cancel, confirm);
  cancel.focus();

  const showChanges = (now: Token, deletedNothing: boolean) => {
    const rows = diff(shown, now);
    fill(
      status,
      h(
        "div",
        { class: "notice notice-warning", id: "delete-changed", role: "alert" },
        h(
          "p",
          {},
          deletedNothing
            ? "This API token changed after this dialog opened, so nothing was deleted."
            : "This API token changed after this dialog opened.",
        ),
        rows.length > 0
          ? h(
              "table",
              { class: "diff" },
              h("caption", { class: "visually-hidden" }, "What changed"),
              h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Field"), h("th", { scope: "col" }, "When opened"), h("th", { scope: "col" }, "Now"))),
              h("tbody", {}, rows.map(([f, a, b]) => h("tr", {}, h("th", { scope: "row" }, f), h("td", {}, a), h("td", {}, b)))),
            )
          : null,
        h(
          "p",
          {},
          deletedNothing
            ? "Review it: select Delete again to delete the token as it is now, or Cancel."
            : "If you select Delete, nothing will be deleted: this dialog will show the token as it is now, for you to confirm again.",
        ),
      ),
    );
    if (deletedNothing) {
      // The person has now been shown the token as it is: confirm that one.
      shown = now;
      renderQuestion();
    }
  };

  const showDeletedElsewhere = (d: { actor: string; at: { seconds: bigint; nanos: number } | undefined }) => {
    confirm.hidden = true;
    cancel.textContent = "Close";
    warnings.hidden = true;
    fill(question, "API token ", h("strong", { class: "delete-name" }, shown.name), " (", h("span", { class: "mono delete-id" }, shown.id), ") is already gone: there is nothing to delete.");
    fill(
      status,
      h(
        "p",
        { class: "notice notice-warning", id: "delete-gone", role: "alert" },
        d.actor
          ? `It was deleted meanwhile, by ${app.actorName(d.actor)} on ${formatTime(d.at)}.`
          : "It was deleted meanwhile.",
      ),
    );
  };

  const unsubscribe = live?.subscribe((c) => {
    if (c.kind !== "token" || c.id !== t.id || busy) return;
    if (c.deletion && !c.deletion.mine) showDeletedElsewhere(c.deletion);
    else if (c.token && c.token.etag !== shown.etag) showChanges(c.token, false);
  });
  void m.closed.then(() => unsubscribe?.());

  const load = async () => {
    fill(status, h("p", { class: "muted" }, "Checking the token…"));
    try {
      const r = await tokens.deleteToken({ id: t.id, validateOnly: true }, { signal: sessionSignal() });
      if (r.token) {
        shown = r.token;
        renderQuestion();
        fill(status);
        confirm.disabled = false;
      }
    } catch (err) {
      const f = failure(err);
      const gone = live?.deleted.get(t.id);
      if (f.reason === "TOKEN_NOT_FOUND" && gone) showDeletedElsewhere(gone);
      else {
        fill(status);
        report(app, f, error);
      }
    }
  };

  const doDelete = async () => {
    busy = true;
    confirm.disabled = true;
    cancel.disabled = true;
    error.hidden = true;
    confirm.textContent = "Deleting…";
    live?.deleting.add(t.id);
    try {
      const r = await tokens.deleteToken({ id: t.id, etag: shown.etag }, { signal: sessionSignal() });
      const tomb = r.token ?? shown;
      live?.applyLocal(tomb, { actor: tomb.audit?.deleted?.by ?? "", at: tomb.audit?.deleted?.at });
      m.close();
      toast(`API token '${tomb.name}' (${tomb.id}) was deleted successfully.`);
      hooks.onDeleted();
    } catch (err) {
      const f = failure(err);
      busy = false;
      cancel.disabled = false;
      confirm.textContent = "Delete";
      if (f.reason === "ETAG_MISMATCH") {
        try {
          const now = await tokens.getToken({ id: t.id }, { signal: sessionSignal() });
          showChanges(now, true);
          confirm.disabled = false;
        } catch (err2) {
          report(app, failure(err2), error);
        }
      } else if (f.reason === "TOKEN_NOT_FOUND") {
        const gone = live?.deleted.get(t.id);
        if (gone && !gone.mine) showDeletedElsewhere(gone);
        else report(app, f, error);
      } else {
        confirm.disabled = false;
        report(app, f, error);
      }
    } finally {
      live?.deleting.delete(t.id);
    }
  };

  void load();
}

/** Field-by-field differences a person can read. */
function diff(a: Token, b: Token): [string, string, string][] {
  const out: [string, string, string][] = [];
  const add = (field: string, x: string, y: string) => {
    if (x !== y) out.push([field, x || "(empty)", y || "(empty)"]);
  };
  add("Name", a.name, b.name);
  add("Status", STATUS_LABEL[a.status], STATUS_LABEL[b.status]);
  add("Modules", a.modules.join(", "), b.modules.join(", "));
  add("Description", a.description, b.description);
  add("Logo URL", a.icon, b.icon);
  if (out.length === 0 && a.etag !== b.etag) out.push(["Version", String(a.revision), String(b.revision)]);
  return out;
}

