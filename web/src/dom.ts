// Tiny DOM helpers: no framework, no innerHTML (nothing a token's name holds
// is ever parsed as markup), no inline styles (the CSP forbids them).

type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

/** Creates an element: `on*` attributes become listeners, `false`/`null` are left out. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

let uid = 0;
/** A fresh id for label/aria wiring. */
export function newId(prefix: string): string {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** Elements a keyboard user can reach, in order. */
export function focusables(root: Element): HTMLElement[] {
  const sel =
    'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';
  return Array.from(root.querySelectorAll<HTMLElement>(sel)).filter(
    (e) => !e.closest("[hidden]") && e.getClientRects().length > 0,
  );
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dateTimeLong = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A `<time>` for a protobuf Timestamp (or "Never"). */
export function timeEl(ts: { seconds: bigint; nanos: number } | undefined, never = "Never", long = false): HTMLElement {
  if (!ts || (ts.seconds === 0n && ts.nanos === 0)) return h("span", { class: "muted" }, never);
  const d = toDate(ts);
  return h("time", { datetime: d.toISOString() }, (long ? dateTimeLong : dateTime).format(d));
}

export function toDate(ts: { seconds: bigint; nanos: number }): Date {
  return new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6));
}

export function formatTime(ts: { seconds: bigint; nanos: number } | undefined): string {
  if (!ts) return "an unknown time";
  return dateTimeLong.format(toDate(ts));
}

/** Copies text, with a fallback for pages that are not a secure context. */
export async function copyText(text: string, source?: HTMLInputElement | HTMLTextAreaElement): Promise<boolean> {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // fall through to the selection-based copy
  }
  if (source) {
    source.focus();
    source.select();
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
  return false;
}
