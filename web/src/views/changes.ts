// What one change did, in words: the Audit trail compares a change's token
// with the token of the change before it (docs/contract.md §3.6).

import { EventType, type Token } from "../gen/apitokens/v1/tokens_pb";
import { STATUS_LABEL } from "../ui";

export interface Line {
  text: string;
  /** A remark rather than a change (shown muted). */
  muted?: boolean;
}

const WORDS: Partial<Record<EventType, string>> = {
  [EventType.CREATED]: "Created",
  [EventType.UPDATED]: "Updated",
  [EventType.ENABLED]: "Enabled",
  [EventType.DISABLED]: "Disabled",
  [EventType.DELETED]: "Deleted",
};

export function whatHappened(type: EventType): string {
  return WORDS[type] ?? "Changed";
}

const LONG = 160;
const quote = (s: string) => `“${s.length > LONG ? `${s.slice(0, LONG)}…` : s}”`;
const list = (xs: string[]) => xs.join(", ");

/**
 * The lines under a change's type. `before` is the token after the next
 * older change, if the page has it; `edge` says why it may not: "more" (an
 * older page is still to be read) or "end" (this is the oldest change kept).
 */
export function describe(type: EventType, after: Token, before: Token | undefined, edge: "" | "more" | "end"): Line[] {
  if (type === EventType.CREATED) {
    return [
      { text: `Name: ${quote(after.name)}` },
      { text: after.modules.length ? `Modules: ${list(after.modules)}` : "No modules" },
      after.description ? { text: `Description: ${quote(after.description)}` } : null,
      after.icon ? { text: `Logo URL: ${after.icon}` } : null,
    ].filter((l): l is Line => l !== null);
  }
  if (!before) {
    if (type !== EventType.UPDATED) return [];
    return [
      edge === "more"
        ? { text: "Show older changes to see what it changed.", muted: true }
        : { text: "What it changed from is beyond the retained history.", muted: true },
    ];
  }
  const out: Line[] = [];
  if (before.name !== after.name) out.push({ text: `Name changed from ${quote(before.name)} to ${quote(after.name)}` });
  text(out, "Description", before.description, after.description, quote);
  text(out, "Logo URL", before.icon, after.icon, (s) => s);
  const added = after.modules.filter((m) => !before.modules.includes(m));
  const removed = before.modules.filter((m) => !after.modules.includes(m));
  if (added.length) out.push({ text: `${added.length === 1 ? "Module" : "Modules"} added: ${list(added)}` });
  if (removed.length) out.push({ text: `${removed.length === 1 ? "Module" : "Modules"} removed: ${list(removed)}` });
  // Enabled, Disabled and Deleted say the new status already.
  if (before.status !== after.status && type === EventType.UPDATED) {
    out.push({ text: `Status changed from ${STATUS_LABEL[before.status]} to ${STATUS_LABEL[after.status]}` });
  }
  if (out.length === 0 && type === EventType.UPDATED) out.push({ text: "Nothing the console shows changed.", muted: true });
  return out;
}

function text(out: Line[], field: string, was: string, now: string, show: (s: string) => string): void {
  if (was === now) return;
  if (!was) out.push({ text: `${field} set to ${show(now)}` });
  else if (!now) out.push({ text: `${field} removed (was ${show(was)})` });
  else out.push({ text: `${field} changed from ${show(was)} to ${show(now)}` });
}
