// The account's live tokens, kept current by one WatchTokens stream
// (docs/contract.md §3.5, §8): `send_initial` gives a snapshot of every live
// token, then SYNCED, then each change as it is committed. A dropped stream
// resumes from the last revision seen + 1, so nothing is missed or
// repeated; if tokend no longer has that history (OUT_OF_RANGE /
// REVISION_COMPACTED) the page lists again with a fresh snapshot.

import { Code } from "@connectrpc/connect";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { sessionSignal, tokens } from "./api";
import { EventType, type Token, type TokenEvent } from "./gen/apitokens/v1/tokens_pb";
import { failure, isSignedOut, type Failure } from "./errors";

export type LiveState = "connecting" | "live" | "reconnecting" | "failed" | "stopped";

/** A token that was deleted while this page watched: who did it, and when. */
export interface Deletion {
  token: Token;
  actor: string;
  at: Timestamp | undefined;
  /** Deleted from this page (its own dialog), not by someone else. */
  mine: boolean;
}

export type Change =
  | { kind: "reset" }
  | { kind: "state" }
  | { kind: "token"; id: string; token: Token | undefined; deletion?: Deletion };

// Pauses between reconnects; a pause ends early when the browser comes
// back online (tests/browser/lib.mjs restartTokend relies on it).
const RESUME_BACKOFF_MS = [250, 500, 1000, 2000, 5000, 10000];

export class LiveTokens {
  readonly tokens = new Map<string, Token>();
  readonly deleted = new Map<string, Deletion>();
  state: LiveState = "connecting";
  /** The first snapshot has arrived: the list is usable. */
  synced = false;
  /** Snapshots loaded: 1, plus one per re-list after REVISION_COMPACTED. */
  snapshots = 0;
  /** Why the stream stopped for good (state "failed"). */
  error: Failure | null = null;
  /** Ids this page is deleting right now: their DELETED event is ours. */
  readonly deleting = new Set<string>();
  private last = 0n;
  private readonly abort = new AbortController();
  private readonly listeners = new Set<(c: Change) => void>();
  private readonly eventListeners = new Set<(ev: TokenEvent) => void>();

  constructor(
    readonly accountId: string,
    private readonly onSignedOut: (f: Failure) => void,
  ) {}

  start(): void {
    const stop = () => this.stop();
    sessionSignal().addEventListener("abort", stop, { once: true });
    void this.run();
  }

  stop(): void {
    this.abort.abort();
    this.setState("stopped");
  }

  subscribe(fn: (c: Change) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Every change event the stream delivers (CREATED … DELETED), as it
   * arrives and before the token it carries is applied: even one older than
   * what the page already knows of its token (the Audit trail lists them).
   * Changes missed while the stream re-listed are not replayed: a "reset"
   * Change says so.
   */
  onEvent(fn: (ev: TokenEvent) => void): () => void {
    this.eventListeners.add(fn);
    return () => this.eventListeners.delete(fn);
  }

  /** Applies a token this page got back from a write, before its event. */
  applyLocal(token: Token, deletion?: Omit<Deletion, "token" | "mine">): void {
    if (deletion) {
      this.remove(token, deletion.actor, deletion.at, true);
    } else {
      this.upsert(token);
    }
  }

  private emit(c: Change): void {
    for (const fn of [...this.listeners]) fn(c);
  }

  private setState(s: LiveState): void {
    if (this.state === s) return;
    this.state = s;
    this.emit({ kind: "state" });
  }

  private upsert(t: Token): void {
    if (this.deleted.has(t.id)) return; // deleted is final: a late event changes nothing
    const known = this.tokens.get(t.id);
    if (known && known.revision > t.revision) return;
    // Last access is not history: a change event does not carry it, and the
    // last one known (from the snapshot or a read) stays.
    if (!t.lastAccessTime && known?.lastAccessTime) t.lastAccessTime = known.lastAccessTime;
    this.tokens.set(t.id, t);
    this.emit({ kind: "token", id: t.id, token: t });
  }

  private remove(t: Token, actor: string, at: Timestamp | undefined, mine: boolean): void {
    const earlier = this.deleted.get(t.id);
    const deletion: Deletion = { token: t, actor, at, mine: mine || (earlier?.mine ?? false) || this.deleting.has(t.id) };
    this.deleted.set(t.id, deletion);
    const had = this.tokens.delete(t.id);
    if (had || !earlier) this.emit({ kind: "token", id: t.id, token: undefined, deletion });
  }

  private async run(): Promise<void> {
    const signal = AbortSignal.any([this.abort.signal, sessionSignal()]);
    let initial = true;
    let attempt = 0;
    while (!signal.aborted) {
      const snapshot = new Map<string, Token>();
      try {
        const stream = tokens.watchTokens(
          initial
            ? { accountId: this.accountId, sendInitial: true }
            : { accountId: this.accountId, startRevision: this.last + 1n },
          {
            signal,
            // The stream is open once its headers arrive, before any event.
            onHeader: () => {
              if (!initial) this.setState("live");
            },
          },
        );
        for await (const ev of stream) {
          attempt = 0;
          if (initial) {
            if (ev.type === EventType.SNAPSHOT && ev.token) {
              snapshot.set(ev.token.id, ev.token);
            } else if (ev.type === EventType.SYNCED) {
              this.resync(snapshot);
              initial = false;
            }
          } else {
            this.apply(ev);
          }
          this.last = ev.revision;
        }
        // The server ended the stream (it never does while serving): resume.
      } catch (err) {
        if (signal.aborted) return;
        const f = failure(err);
        if (f.reason === "REVISION_COMPACTED") {
          initial = true; // list again: the history to resume from is gone
          continue;
        }
        if (isSignedOut(f)) {
          this.error = f;
          this.setState("failed");
          this.onSignedOut(f);
          return;
        }
        if (f.code === Code.NotFound || f.code === Code.PermissionDenied || f.code === Code.InvalidArgument) {
          this.error = f;
          this.setState("failed");
          return;
        }
      }
      if (signal.aborted) return;
      this.setState(this.synced ? "reconnecting" : "connecting");
      const wait = RESUME_BACKOFF_MS[Math.min(attempt, RESUME_BACKOFF_MS.length - 1)];
      attempt += 1;
      await sleep(wait, signal);
    }
  }

  /** A fresh snapshot replaces the list; tokens missing from it are gone. */
  private resync(snapshot: Map<string, Token>): void {
    for (const [id, t] of this.tokens) {
      if (!snapshot.has(id)) {
        this.tokens.delete(id);
        if (!this.deleted.has(id)) this.deleted.set(id, { token: t, actor: "", at: undefined, mine: false });
      }
    }
    for (const [id, t] of snapshot) {
      if (this.deleted.has(id)) continue;
      this.tokens.set(id, t);
    }
    this.synced = true;
    this.snapshots += 1;
    this.state = "live";
    this.emit({ kind: "reset" });
  }

  private apply(ev: TokenEvent): void {
    const t = ev.token;
    if (!t) return; // PROGRESS
    if (ev.type >= EventType.CREATED && ev.type <= EventType.DELETED) {
      for (const fn of [...this.eventListeners]) fn(ev);
    }
    switch (ev.type) {
      case EventType.CREATED:
      case EventType.UPDATED:
      case EventType.ENABLED:
      case EventType.DISABLED:
        this.upsert(t);
        break;
      case EventType.DELETED:
        this.remove(t, ev.actor || t.audit?.deleted?.by || "", t.audit?.deleted?.at ?? ev.time, false);
        break;
      default:
        break;
    }
  }
}

/** Waits `ms`, or less: until the session ends, or until the browser is
 * back online (a laptop waking, the network back), when the next try should
 * not wait out a pause of up to 10 s. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      window.removeEventListener("online", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    window.addEventListener("online", done);
    signal.addEventListener("abort", done);
  });
}
