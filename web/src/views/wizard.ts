// Add token: General (logo URL, name, description, expiry) → Modules (only
// the account's) → Overview → Add; then the secret, shown this once, with Copy.
// Closing the dialog drops the secret from the page for good.

import { sessionSignal, tokens } from "../api";
import type { App } from "../app";
import { fill, h, newId } from "../dom";
import { type Failure, failure, isSignedOut } from "../errors";
import { button, modal, secretBlock, toast, tokenIcon } from "../ui";
import { accountModules } from "./actions";

export interface TokenValues {
  name: string;
  description: string;
  icon: string;
  modules: string[];
}

const NAME = /^[\p{L}\p{N} .'"-]+$/u;

/** The General and Modules fields, shared by the wizard and Edit. */
export function tokenFields(initial: TokenValues, available: string[]) {
  const field = (id: string, label: string, control: HTMLElement, help?: string) => {
    const err = h("p", { id: `${id}-error`, class: "field-error", hidden: true });
    const helpEl = help ? h("p", { id: `${id}-help`, class: "help" }, help) : null;
    control.setAttribute("aria-describedby", [help ? `${id}-help` : "", `${id}-error`].join(" ").trim());
    return { el: h("div", { class: "field" }, h("label", { for: id }, label), control, helpEl, err), err, control };
  };
  const ids = { icon: newId("icon"), name: newId("name"), description: newId("description") };
  const icon = field(
    ids.icon,
    "Logo URL (optional)",
    h("input", { id: ids.icon, type: "url", value: initial.icon, autocomplete: "off", inputmode: "url" }),
    "An http:// or https:// address of an image. Logos hosted elsewhere show as a letter on this page.",
  );
  const name = field(
    ids.name,
    "Name",
    h("input", { id: ids.name, type: "text", value: initial.name, required: true, maxlength: "200", autocomplete: "off" }),
    "Letters, digits, spaces and - . ' \" (up to 200 characters).",
  );
  const desc = field(
    ids.description,
    "Description (optional)",
    h("textarea", { id: ids.description, rows: "3", maxlength: "2000" }, initial.description),
  );
  const general = h("fieldset", { class: "fieldset" }, h("legend", {}, "General"), icon.el, name.el, desc.el);

  const modulesError = h("p", { class: "field-error", id: newId("modules-error"), hidden: true });
  const boxes = available.map((m) => {
    const id = newId("module");
    const box = h("input", { type: "checkbox", id, value: m, checked: initial.modules.includes(m) });
    return { m, box, el: h("div", { class: "checkbox" }, box, h("label", { for: id }, m)) };
  });
  const modules = h(
    "fieldset",
    { class: "fieldset", "aria-describedby": modulesError.id },
    h("legend", {}, "Modules"),
    h("p", { class: "help" }, "What the token may do: only this account's modules can be picked."),
    boxes.length ? h("div", { class: "checkbox-grid" }, boxes.map((b) => b.el)) : h("p", {}, "This account has no modules."),
    modulesError,
  );

  const setError = (f: { err: HTMLElement; control: HTMLElement }, text: string | null) => {
    f.err.textContent = text ?? "";
    f.err.hidden = text === null;
    if (text) f.control.setAttribute("aria-invalid", "true");
    else f.control.removeAttribute("aria-invalid");
  };

  const readGeneral = (): Omit<TokenValues, "modules"> | null => {
    const v = {
      icon: (icon.control as HTMLInputElement).value.trim(),
      name: (name.control as HTMLInputElement).value,
      description: (desc.control as HTMLTextAreaElement).value,
    };
    let bad: HTMLElement | null = null;
    const n = v.name;
    const nameProblem =
      n.trim() === ""
        ? "Enter a name."
        : n !== n.trim()
          ? "A name can't start or end with a space."
          : Array.from(n).length > 200
            ? "A name is at most 200 characters."
            : !NAME.test(n)
              ? "Use only letters, digits, spaces and - . ' \""
              : null;
    setError(name, nameProblem);
    if (nameProblem) bad ??= name.control;
    let iconProblem: string | null = null;
    if (v.icon !== "") {
      let ok = false;
      try {
        const u = new URL(v.icon);
        ok = (u.protocol === "http:" || u.protocol === "https:") && !/\s/.test(v.icon) && v.icon.length <= 2048;
      } catch {
        ok = false;
      }
      if (!ok) iconProblem = "Enter an http:// or https:// address, or leave it empty.";
    }
    setError(icon, iconProblem);
    if (iconProblem) bad = icon.control;
    const descProblem = Array.from(v.description).length > 2000 ? "A description is at most 2000 characters." : null;
    setError(desc, descProblem);
    if (descProblem) bad ??= desc.control;
    if (bad) {
      bad.focus();
      return null;
    }
    return v;
  };

  const readModules = (): string[] | null => {
    const picked = boxes.filter((b) => b.box.checked).map((b) => b.m);
    if (picked.length === 0) {
      modulesError.textContent = "Pick at least one module.";
      modulesError.hidden = false;
      boxes[0]?.box.focus();
      return null;
    }
    modulesError.hidden = true;
    return picked;
  };

  return {
    general,
    modules,
    readGeneral,
    readModules,
    /**
     * Shows a refusal of tokend's beside the field it names (its checks are
     * the final word: the page's own are a convenience), focused; false if
     * it names none of these fields.
     */
    showRefusal(f: Failure): boolean {
      const path = fieldOf(f);
      const target = ({ name, icon, description: desc } as Record<string, typeof name>)[path];
      if (target) {
        setError(target, `${f.problem.charAt(0).toUpperCase()}${f.problem.slice(1)}.`.replace(/\.\.$/, "."));
        target.control.focus();
        return true;
      }
      if (path === "modules") {
        modulesError.textContent = f.sentence;
        modulesError.hidden = false;
        boxes[0]?.box.focus();
        return true;
      }
      return false;
    },
    /** Which part of the form a refusal names a field of, if any. */
    partOf(f: Failure): "general" | "modules" | undefined {
      const path = fieldOf(f);
      if (path === "name" || path === "icon" || path === "description") return "general";
      return path === "modules" ? "modules" : undefined;
    },
    read(): TokenValues | null {
      const g = readGeneral();
      if (!g) return null;
      const m = readModules();
      return m ? { ...g, modules: m } : null;
    },
    focus: () => (name.control as HTMLInputElement).focus(),
  };
}

/** A refusal's field, as the form names it (an update's are `token.*`). */
const fieldOf = (f: Failure) => f.field.replace(/^token\./, "");

const STEPS = ["General", "Modules", "Overview"];

/** Lifetimes offered, in days; 0: none asked (never, or the account's limit). */
const LIFETIMES = [0, 7, 30, 90, 365];

const inDays = (days: number) => (days === 365 ? "1 year" : `${days} days`);

/** The wizard's expiry choice, within the account's limit if it has one. */
function expiryField(limitDays: number) {
  const select = h(
    "select",
    { id: "expires", "aria-describedby": "expires-help" },
    LIFETIMES.filter((d) => !limitDays || d <= limitDays).map((d) =>
      h("option", { value: String(d) }, d ? inDays(d) : limitDays ? `The account's limit (${inDays(limitDays)})` : "Never"),
    ),
  );
  const el = h(
    "div",
    { class: "field" },
    h("label", { for: "expires" }, "Expires"),
    select,
    h("p", { id: "expires-help", class: "help" }, "From then on the secret is refused everywhere, and the token is deleted."),
  );
  const describe = (days: number) =>
    days ? `In ${inDays(days)}` : limitDays ? `In ${inDays(limitDays)} (the account's limit)` : "Never";
  return { el, days: () => Number(select.value), describe };
}

export function addTokenWizard(app: App, accountId: string): void {
  let busy = false;
  // Once the secret is shown, only Done closes: an Escape would lose it.
  let secretShown = false;
  const m = modal("Add API token", { wide: true, onCancel: () => !busy && !secretShown });
  m.dialog.id = "add-token-dialog";
  const fields = tokenFields({ name: "", description: "", icon: "", modules: [] }, accountModules(app));
  let values: TokenValues = { name: "", description: "", icon: "", modules: [] };
  const limit = app.account?.maxTokenLifetime;
  const expiry = expiryField(limit ? Math.floor(Number(limit.seconds) / 86400) : 0);
  let days = 0;
  let step = 0;

  const stepper = h("ol", { class: "stepper", "aria-label": "Steps" });
  const panel = h("div", { class: "step-panel" });
  const error = h("p", { class: "notice notice-error", role: "alert", hidden: true });
  const cancel = button("Cancel", () => m.close());
  const back = button("Back", () => show(step - 1));
  const next = button("Next", () => void forward(), "primary", { id: "wizard-next" });
  fill(m.body, stepper, panel, error);
  m.footer.append(cancel, back, next);

  const overview = () =>
    h(
      "div",
      { class: "overview" },
      h("h3", {}, "Overview"),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Logo"),
        h("dd", {}, tokenIcon(values), values.icon ? h("span", { class: "mono wrap" }, ` ${values.icon}`) : " None"),
        h("dt", {}, "Name"),
        h("dd", {}, values.name),
        h("dt", {}, "Description"),
        h("dd", {}, values.description || h("span", { class: "muted" }, "None")),
        h("dt", {}, "Modules"),
        h("dd", {}, h("ul", { class: "chips" }, values.modules.map((x) => h("li", { class: "chip" }, x)))),
        h("dt", {}, "Expires"),
        h("dd", {}, expiry.describe(days)),
        h("dt", {}, "Account"),
        h("dd", {}, app.account ? `${app.account.name} (${accountId})` : accountId),
      ),
    );

  const show = (i: number) => {
    step = i;
    fill(
      stepper,
      STEPS.map((s, j) =>
        h(
          "li",
          { class: j === i ? "current" : j < i ? "done" : "", "aria-current": j === i ? "step" : null },
          h("span", { class: "step-number", "aria-hidden": "true" }, String(j + 1)),
          s,
        ),
      ),
    );
    fill(panel, i === 0 ? [fields.general, expiry.el] : i === 1 ? fields.modules : overview());
    back.hidden = i === 0;
    next.textContent = i === 2 ? "Add" : "Next";
    error.hidden = true;
    if (i === 0) fields.focus();
    else if (i === 1) (panel.querySelector("input") as HTMLElement | null)?.focus();
    else next.focus();
  };

  const forward = async () => {
    if (step === 0) {
      const g = fields.readGeneral();
      if (!g) return;
      values = { ...values, ...g };
      days = expiry.days();
      show(1);
    } else if (step === 1) {
      const mods = fields.readModules();
      if (!mods) return;
      values = { ...values, modules: mods };
      show(2);
    } else {
      busy = true;
      next.disabled = true;
      back.disabled = true;
      next.textContent = "Adding…";
      try {
        const expiration = days
          ? { case: "ttl" as const, value: { seconds: BigInt(days * 86400) } }
          : { case: undefined };
        const r = await tokens.createToken({ accountId, ...values, expiration }, { signal: sessionSignal() });
        if (r.token) app.live?.applyLocal(r.token);
        busy = false;
        showSecret(r.secret, r.token?.name ?? values.name, r.token?.id ?? "");
      } catch (err) {
        busy = false;
        next.disabled = false;
        back.disabled = false;
        next.textContent = "Add";
        const f = failure(err);
        if (isSignedOut(f)) {
          m.close();
          app.signedOutBy(f);
          return;
        }
        // A field tokend refused is said beside it, on its own step (the
        // page's checks are a convenience, tokend's the final word).
        const part = fields.partOf(f);
        if (part) {
          show(part === "general" ? 0 : 1);
          fields.showRefusal(f);
          return;
        }
        error.textContent = f.sentence;
        error.hidden = false;
      }
    }
  };

  const showSecret = (secret: string, name: string, id: string) => {
    const { element, field } = secretBlock(secret);
    secretShown = true;
    fill(stepper);
    fill(panel, h("p", {}, "API token ", h("strong", {}, name), ` (${id}) was added.`), element);
    error.hidden = true;
    cancel.hidden = true;
    back.hidden = true;
    next.hidden = true;
    const done = button("Done", () => m.close(), "primary", { id: "wizard-done" });
    m.footer.append(done);
    field.focus();
    field.select();
    toast(`API token '${name}' (${id}) was added successfully.`);
  };

  void m.closed.then(() => {
    // Nothing of the secret survives the dialog.
    fill(panel);
    values = { name: "", description: "", icon: "", modules: [] };
  });
  show(0);
}
