// The details page's Audit trail tab: the token's changes, newest first,
// from tokend's event history (ListTokenEvents, docs/contract.md §3.6): when,
// who, what (compared with the next older change's token) and the revision.
// Older pages on request. Kept live: a change heard on the page's
// WatchTokens stream is added at the top; after the stream re-listed (and
// may have missed changes) the newest page is read again. Rows are keyed by
// revision, so nothing shows twice. When the trail does not reach the
// token's creation, the older changes were compacted: the note says so, and
// what the token's own record says about its creation.

import { Code } from "@connectrpc/connect";
import { sessionSignal, tokens } from "../api";
import type { App } from "../app";
import { fill, formatTime, h, toDate } from "../dom";
import { failure, isSignedOut, type Failure } from "../errors";
import { EventType, type ListTokenEventsResponse, type Token, type TokenEvent } from "../gen/apitokens/v1/tokens_pb";
import { describe, whatHappened } from "./changes";

const PAGE_SIZE = 50;

export interface AuditTrail {
  /** The tab's content; the same element for the page's whole life. */
  readonly el: HTMLElement;
  /** The tab was selected: reads the newest page the first time. */
  show(): void;
  leave(): void;
}

const localTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const exactTime = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });

/** `current()`: the token as the page knows it now (for its audit.created). */
export function auditTrail(app: App, tokenId: string, current: () => Token | undefined): AuditTrail {
  const live = app.live!;
  const abort = new AbortController();
  const signal = AbortSignal.any([abort.signal, sessionSignal()]);
  let events: TokenEvent[] = [];
  const seen = new Set<bigint>();
  /** Heard live: highlighted. */
  const fresh = new Set<bigint>();
  /** Heard live before the first page arrived. */
  let pending: TokenEvent[] = [];
  let next = "";
  let oldest = 0n;
  let started = false;
  let loaded = false;
  let loading: "" | "first" | "older" = "";
  let error: { f: Failure; retry: () => void } | null = null;
  /** Bumped when the list is replaced: an older page asked for before is dropped. */
  let epoch = 0;
  /** The stream re-listed while the newest page was being read: read it again. */
  let again = false;

  const intro = h(
    "p",
    { class: "help audit-intro" },
    "Every change of this API token, newest first, as tokend's event history records it. Changes made anywhere appear here as they happen.",
  );
  const announce = h("p", { class: "visually-hidden", role: "status", id: "audit-status" });
  const problem = h("div", { id: "audit-error" });
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "audit", id: "audit-table" },
    h("caption", { class: "visually-hidden" }, "Changes of this API token, newest first"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col", class: "col-when" }, "When"),
        h("th", { scope: "col" }, "Who"),
        h("th", { scope: "col" }, "What"),
        h("th", { scope: "col", class: "col-revision" }, "Revision"),
      ),
    ),
    tbody,
  );
  const wrap = h("div", { class: "audit-wrap", hidden: true }, table);
  const older = h("button", { type: "button", class: "btn btn-secondary", id: "audit-older", hidden: true }, "Show older changes");
  const end = h("div", { class: "audit-end" });
  const state = h("p", { class: "muted", hidden: true }, "Loading the audit trail…");
  const el = h("div", { class: "audit" }, intro, announce, state, problem, wrap, h("div", { class: "audit-footer" }, older, end));

  const add = (list: TokenEvent[]) => {
    for (const ev of list) {
      if (ev.token?.id !== tokenId || seen.has(ev.revision)) continue;
      seen.add(ev.revision);
      events.push(ev);
    }
    events.sort((a, b) => (a.revision < b.revision ? 1 : a.revision > b.revision ? -1 : 0));
  };

  const call = async (pageToken: string, retry: () => void): Promise<ListTokenEventsResponse | null> => {
    error = null;
    try {
      return await tokens.listTokenEvents({ tokenId, pageSize: PAGE_SIZE, pageToken }, { signal });
    } catch (err) {
      if (signal.aborted) return null;
      const f = failure(err);
      if (isSignedOut(f)) {
        app.signedOutBy(f);
        return null;
      }
      error = { f, retry };
      return null;
    }
  };

  /** The newest page: the first read, or again after the stream re-listed. */
  const readNewest = async () => {
    loading = "first";
    render();
    const r = await call("", () => void readNewest());
    loading = "";
    if (r) {
      // Still continuous with what is shown (or the whole history)? Merge;
      // else more than a page happened meanwhile: start over from this page.
      const joins = r.nextPageToken === "" || r.events.some((e) => seen.has(e.revision));
      if (!loaded || !joins) {
        events = [];
        seen.clear();
        fresh.clear();
        epoch += 1;
        next = r.nextPageToken;
      } else if (r.nextPageToken === "") {
        next = "";
      }
      add(r.events);
      add(pending);
      pending = [];
      oldest = r.oldestRevision;
      if (!loaded) announce.textContent = `${events.length} ${events.length === 1 ? "change" : "changes"} shown.`;
      loaded = true;
    }
    render();
    if (again) {
      again = false;
      void readNewest();
    }
  };

  /** Reads the next older page; the index of the first row it added (-1: none). */
  const readOlder = async (): Promise<number> => {
    if (loading || next === "") return -1;
    const at = epoch;
    const before = events.length;
    loading = "older";
    render();
    const r = await call(next, () => void readOlder());
    loading = "";
    let first = -1;
    if (r && at === epoch) {
      add(r.events);
      next = r.nextPageToken;
      oldest = r.oldestRevision;
      const n = events.length - before;
      if (n > 0) first = before;
      announce.textContent = `${n} older ${n === 1 ? "change" : "changes"} shown.`;
    }
    render();
    return first;
  };
  older.addEventListener("click", async () => {
    const first = await readOlder();
    // The last page removes the button: carry on from the first row it added.
    if (older.hidden && first >= 0 && (document.activeElement === document.body || !document.activeElement?.isConnected)) {
      tbody.rows[first]?.focus();
    }
  });

  const render = () => {
    state.hidden = !(loading === "first" && !loaded);
    fill(
      problem,
      error
        ? h(
            "div",
            { class: "notice notice-error", role: "alert" },
            h("p", {}, sentence(error.f)),
            h("button", { type: "button", class: "btn btn-secondary", onclick: error.retry as EventListener }, "Try again"),
          )
        : null,
    );
    wrap.hidden = !loaded || events.length === 0;
    // Rows are made again (a change reads differently once its older
    // neighbour is known); a focused row keeps the focus.
    const active = document.activeElement;
    const focused = active instanceof HTMLElement && tbody.contains(active) ? active.closest("tr")?.dataset.revision : undefined;
    fill(tbody, events.map((ev, i) => row(ev, events[i + 1], i === events.length - 1 ? (next ? "more" : "end") : "")));
    if (focused) tbody.querySelector<HTMLElement>(`tr[data-revision="${focused}"]`)?.focus();
    older.hidden = !loaded || next === "";
    older.setAttribute("aria-disabled", String(loading === "older"));
    older.textContent = loading === "older" ? "Loading older changes…" : "Show older changes";
    fill(end, loaded && next === "" ? ending() : null);
  };

  const row = (ev: TokenEvent, before: TokenEvent | undefined, edge: "" | "more" | "end") => {
    const at = ev.time ?? { seconds: 0n, nanos: 0 };
    const d = toDate(at);
    const type = EventType[ev.type] ?? String(ev.type);
    const lines = ev.token ? describe(ev.type, ev.token, before?.token, edge) : [];
    return h(
      "tr",
      { "data-revision": String(ev.revision), "data-type": type, class: fresh.has(ev.revision) ? "audit-new" : null, tabindex: "-1" },
      h(
        "th",
        { scope: "row", class: "col-when", "data-label": "When" },
        h("time", { datetime: d.toISOString(), title: `${exactTime.format(d)} (${d.toISOString()})` }, localTime.format(d)),
      ),
      h("td", { "data-label": "Who" }, who(app, ev.actor)),
      h(
        "td",
        { "data-label": "What", class: "audit-what" },
        h("strong", {}, whatHappened(ev.type)),
        fresh.has(ev.revision) ? h("span", { class: "badge badge-new" }, "New") : null,
        lines.length ? h("ul", { class: "audit-changes" }, lines.map((l) => h("li", { class: l.muted ? "muted" : null }, l.text))) : null,
      ),
      h("td", { "data-label": "Revision", class: "col-revision" }, h("span", { class: "mono" }, String(ev.revision))),
    );
  };

  /** Below the last page: the whole history, or where the retained part of it starts. */
  const ending = () => {
    const last = events[events.length - 1];
    if (last?.type === EventType.CREATED) {
      return h("p", { class: "muted", id: "audit-complete" }, "This is the token's whole history: it starts with its creation.");
    }
    const t = current() ?? events[0]?.token;
    const created = t?.audit?.created;
    return h(
      "div",
      { class: "notice notice-warning", id: "audit-compacted" },
      h(
        "p",
        {},
        events.length ? "Earlier changes of this token are beyond" : "None of this token's changes are left in",
        " the history tokend keeps",
        oldest > 0n ? ` (changes from revision ${oldest} on)` : "",
        ", so they can't be listed here.",
      ),
      h(
        "p",
        {},
        created?.at
          ? `The token's own record says it was created by ${app.actorName(created.by)} on ${formatTime(created.at)}.`
          : "The token's own record does not say when it was created.",
      ),
    );
  };

  const sentence = (f: Failure) =>
    f.code === Code.NotFound && live.deleted.has(tokenId) && !app.session?.operator
      ? "This API token was deleted. Only an operator can read a deleted token's audit trail."
      : f.sentence;

  const offEvent = live.onEvent((ev) => {
    if (!started || ev.token?.id !== tokenId) return;
    if (!loaded) {
      pending.push(ev);
      return;
    }
    if (seen.has(ev.revision)) return;
    add([ev]);
    fresh.add(ev.revision);
    announce.textContent = `New change: ${whatHappened(ev.type)} by ${app.actorName(ev.actor)}.`;
    render();
  });
  // A new snapshot (the first one, or after the history to resume from was
  // compacted) may stand for changes never heard as events.
  const offChange = live.subscribe((c) => {
    if (c.kind !== "reset" || !started) return;
    if (loading === "first") again = true; // the read in flight may predate the snapshot
    else void readNewest();
  });

  return {
    el,
    show() {
      if (started) return;
      started = true;
      void readNewest();
    },
    leave() {
      offEvent();
      offChange();
      abort.abort();
    },
  };
}

/** The actor: the token's name when the page knows it, and its id; `bootstrap` as is. */
function who(app: App, id: string): HTMLElement {
  if (!id) return h("span", { class: "muted" }, "Unknown");
  if (id === "bootstrap") return h("span", { class: "actor" }, "bootstrap", h("span", { class: "actor-id" }, "tokend's first start"));
  const self = app.session?.self;
  const t = app.live?.tokens.get(id) ?? app.live?.deleted.get(id)?.token ?? (self?.id === id ? self : undefined);
  const you = self?.id === id ? " (you)" : "";
  if (!t) return h("span", { class: "actor mono" }, id, you);
  return h("span", { class: "actor" }, t.name, you, h("span", { class: "actor-id mono" }, id));
}
