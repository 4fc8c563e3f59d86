// Shared pieces of the page: messages (toasts), modal dialogs, action menus,
// the token icon and status badge.

import { copyText, focusables, h, newId } from "./dom";
import { TokenStatus, type Token } from "./gen/apitokens/v1/tokens_pb";

// ---------------------------------------------------------------- messages

/** A success or information message, read out by screen readers. */
export function toast(text: string, kind: "success" | "info" | "error" = "success"): void {
  const region = document.getElementById(kind === "error" ? "alerts" : "messages");
  if (!region) return;
  const close = h("button", { type: "button", class: "icon-button", "aria-label": "Dismiss message" }, "×");
  const item = h("div", { class: `toast toast-${kind}` }, h("p", {}, text), close);
  const remove = () => item.remove();
  close.addEventListener("click", remove);
  region.append(item);
  if (kind !== "error") setTimeout(remove, 10_000);
}

// ----------------------------------------------------------------- dialogs

export interface Modal {
  dialog: HTMLDialogElement;
  body: HTMLElement;
  footer: HTMLElement;
  close(): void;
  /** Resolves when the dialog closes (by any button, Escape, or close()). */
  closed: Promise<void>;
}

/**
 * A modal `<dialog>`: the rest of the page is inert while it is open, Tab
 * stays inside it, Escape cancels (`onCancel`), and focus goes back to where
 * it was when it closes.
 */
export function modal(title: string, opts: { wide?: boolean; onCancel?: () => boolean | void } = {}): Modal {
  const titleId = newId("dialog-title");
  const body = h("div", { class: "dialog-body" });
  const footer = h("div", { class: "dialog-footer" });
  const dialog = h(
    "dialog",
    { class: opts.wide ? "dialog dialog-wide" : "dialog", "aria-labelledby": titleId },
    h("h2", { id: titleId, class: "dialog-title" }, title),
    body,
    footer,
  );
  const opener = document.activeElement as HTMLElement | null;
  let done!: () => void;
  const closed = new Promise<void>((r) => (done = r));
  // Escape: the caller may refuse (a request in flight, a secret shown once
  // that only Done may put away). Refused at the key as well as at the
  // cancel event: Chrome lets a second Escape close a dialog whose cancel
  // was refused without a click in between.
  const refuses = () => opts.onCancel !== undefined && opts.onCancel() === false;
  dialog.addEventListener("cancel", (e) => {
    if (refuses()) e.preventDefault();
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && opener.isConnected) opener.focus();
    else document.getElementById("main-heading")?.focus();
    done();
  });
  dialog.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && refuses()) e.preventDefault();
    // Tab wraps around inside the dialog instead of leaving for the browser's UI.
    if (e.key !== "Tab") return;
    const items = focusables(dialog);
    if (items.length === 0) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (e.shiftKey && document.activeElement === first) {
      last.focus();
      e.preventDefault();
    } else if (!e.shiftKey && document.activeElement === last) {
      first.focus();
      e.preventDefault();
    }
  });
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, body, footer, close: () => dialog.open && dialog.close(), closed };
}

export function button(
  label: string,
  onclick: (e: MouseEvent) => void,
  kind: "primary" | "secondary" | "danger" | "link" = "secondary",
  attrs: Record<string, string> = {},
): HTMLButtonElement {
  return h("button", { type: "button", class: `btn btn-${kind}`, onclick: onclick as EventListener, ...attrs }, label);
}

// ------------------------------------------------------------------- menus

export interface MenuItem {
  label: string;
  run: () => void;
  danger?: boolean;
  disabled?: boolean;
}

const REFRESH = "menu-refresh";

/** Tells a menuButton that what its items act on changed. */
export function refreshMenu(menuButtonEl: Element | null): void {
  menuButtonEl?.dispatchEvent(new Event(REFRESH));
}

/**
 * A button that opens a menu of actions (WAI-ARIA menu button): arrows move,
 * Escape closes and returns focus to the button, a click outside closes.
 */
export function menuButton(
  label: HTMLElement | string,
  accessibleName: string,
  items: () => MenuItem[],
  cls = "icon-button",
): HTMLElement {
  const menuId = newId("menu");
  const trigger = h(
    "button",
    {
      type: "button",
      class: cls,
      "aria-haspopup": "menu",
      "aria-expanded": "false",
      "aria-controls": menuId,
      "aria-label": accessibleName,
    },
    label,
  );
  const menu = h("ul", { id: menuId, role: "menu", class: "menu", hidden: true, "aria-label": accessibleName });
  const wrap = h("div", { class: "menu-wrap" }, trigger, menu);

  const close = (refocus: boolean) => {
    if (menu.hidden) return;
    menu.hidden = true;
    trigger.setAttribute("aria-expanded", "false");
    document.removeEventListener("pointerdown", outside, true);
    if (refocus) trigger.focus();
  };
  const outside = (e: Event) => {
    if (!wrap.contains(e.target as Node)) close(false);
  };
  const entries = () => Array.from(menu.querySelectorAll<HTMLButtonElement>("[role=menuitem]:not([disabled])"));
  // The items shown, and what each runs: a refresh that offers the same
  // items keeps their nodes (a click or the focus on one stays good) and
  // only takes their newer actions.
  let shown: MenuItem[] = [];
  const sameItems = (a: MenuItem[], b: MenuItem[]) =>
    a.length === b.length &&
    a.every((it, i) => it.label === b[i].label && !!it.disabled === !!b[i].disabled && !!it.danger === !!b[i].danger);
  const fillItems = () => {
    const next = items();
    if (sameItems(shown, next) && menu.childElementCount === next.length) {
      shown = next;
      return;
    }
    shown = next;
    menu.replaceChildren(
      ...next.map((it, i) =>
        h(
          "li",
          { role: "none" },
          h(
            "button",
            {
              type: "button",
              role: "menuitem",
              tabindex: "-1",
              class: it.danger ? "menu-item danger" : "menu-item",
              disabled: it.disabled ?? false,
              onclick: (() => {
                close(true);
                shown[i].run();
              }) as EventListener,
            },
            it.label,
          ),
        ),
      ),
    );
  };
  const open = (focusLast = false) => {
    fillItems();
    menu.hidden = false;
    trigger.setAttribute("aria-expanded", "true");
    document.addEventListener("pointerdown", outside, true);
    const list = entries();
    (focusLast ? list[list.length - 1] : list[0])?.focus();
  };
  // What the menu acts on changed (refreshMenu): an open menu shows the
  // items that apply now, the focus staying on the same item if it still
  // is one, rather than offering Disable on a token already disabled.
  wrap.addEventListener(REFRESH, () => {
    if (menu.hidden) return;
    const focused = menu.contains(document.activeElement) ? document.activeElement?.textContent : undefined;
    fillItems();
    const list = entries();
    if (focused !== undefined) (list.find((b) => b.textContent === focused) ?? list[0])?.focus();
  });
  trigger.addEventListener("click", () => (menu.hidden ? open() : close(true)));
  trigger.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      open(e.key === "ArrowUp");
    }
  });
  menu.addEventListener("keydown", (e) => {
    const list = entries();
    const i = list.indexOf(document.activeElement as HTMLButtonElement);
    let next: number | null = null;
    if (e.key === "ArrowDown") next = (i + 1) % list.length;
    else if (e.key === "ArrowUp") next = (i - 1 + list.length) % list.length;
    else if (e.key === "Home") next = 0;
    else if (e.key === "End") next = list.length - 1;
    else if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      close(true);
      return;
    } else if (e.key === "Tab") {
      close(false);
      return;
    }
    if (next !== null) {
      e.preventDefault();
      list[next]?.focus();
    }
  });
  return wrap;
}

// ------------------------------------------------------------ token bits

export const STATUS_LABEL: Record<number, string> = {
  [TokenStatus.ACTIVE]: "Active",
  [TokenStatus.DISABLED]: "Disabled",
  [TokenStatus.DELETED]: "Deleted",
  [TokenStatus.UNSPECIFIED]: "Unknown",
};

export function statusBadge(status: TokenStatus): HTMLElement {
  const name = STATUS_LABEL[status] ?? "Unknown";
  return h("span", { class: `badge badge-${name.toLowerCase()}` }, name);
}

/**
 * The token's logo. The page's CSP allows images only from this server and
 * data: URLs, so a logo elsewhere (icons are http(s) URLs) shows as a
 * placeholder with the name's first letter.
 */
export function tokenIcon(t: Pick<Token, "icon" | "name">, large = false): HTMLElement {
  const cls = large ? "token-icon token-icon-large" : "token-icon";
  let sameOrigin = false;
  try {
    sameOrigin = t.icon !== "" && new URL(t.icon).origin === window.location.origin;
  } catch {
    sameOrigin = false;
  }
  if (sameOrigin) return h("img", { class: cls, src: t.icon, alt: "" });
  const letter = Array.from(t.name.trim())[0]?.toUpperCase() ?? "?";
  return h("span", { class: `${cls} token-icon-placeholder hue-${hue(t.name)}`, "aria-hidden": "true" }, letter);
}

function hue(s: string): number {
  let x = 0;
  for (const c of s) x = (x * 31 + (c.codePointAt(0) ?? 0)) >>> 0;
  return x % 6;
}

/** Modules as the table shows them: the name when there is one, else a count. */
export function modulesSummary(modules: string[]): string {
  if (modules.length === 0) return "None";
  if (modules.length === 1) return modules[0];
  return `${modules.length} modules`;
}

/**
 * A new secret, shown this once: the warning, a read-only field holding it
 * (as a property, so it is never in the markup) and Copy. Adding a token
 * and rolling one both end here.
 */
export function secretBlock(secret: string): { element: HTMLElement; field: HTMLInputElement } {
  const field = h("input", {
    id: "new-secret",
    type: "text",
    readonly: true,
    class: "mono secret",
    spellcheck: "false",
    autocomplete: "off",
    "aria-describedby": "secret-warning",
  });
  field.value = secret;
  const copied = h("span", { class: "copied", "aria-live": "polite" });
  const copy = button("Copy", async () => {
    copied.textContent = (await copyText(field.value, field)) ? "Copied" : "Select the text and copy it";
  }, "secondary", { id: "copy-secret" });
  const element = h(
    "div",
    {},
    h(
      "p",
      { id: "secret-warning", class: "notice notice-warning" },
      "Copy the secret now and store it safely. It can't be shown again: tokend keeps only a hash of it.",
    ),
    h("div", { class: "field" }, h("label", { for: "new-secret" }, "Secret"), h("div", { class: "copy-row" }, field, copy), copied),
  );
  return { element, field };
}
