// The console: who is signed in, which account is shown, the live list of
// its tokens, and which screen is on (from the URL's fragment, which never
// holds anything secret: `#/ACC-…/tokens` and `#/ACC-…/tokens/TKN-…`).

import { accounts, forgetSecret, sessionSignal, tokens, useSecret } from "./api";
import { fill, h } from "./dom";
import { failure, type Failure } from "./errors";
import { AccountType, type Account } from "./gen/apitokens/v1/accounts_pb";
import type { Token } from "./gen/apitokens/v1/tokens_pb";
import { LiveTokens } from "./live";
import { toast } from "./ui";
import { detailsView } from "./views/details";
import { listView } from "./views/list";
import { noAccessView, signInView } from "./views/signin";

export interface Session {
  /** The token signed in with (never its secret). */
  self: Token;
  /** Its account. */
  account: Account;
  /** May manage every account's tokens (and list accounts). */
  operator: boolean;
  /** May manage tokens at all (access-management, or the operator). */
  canManage: boolean;
}

/** What a screen gets: the app, and a way to say what it cleans up. */
export interface Screen {
  /** Called when the screen is left. */
  leave(): void;
}

export interface ListPrefs {
  search: string;
  status: "all" | "active" | "disabled";
  pageSize: number;
  page: number;
}

type Route = { kind: "list"; account: string } | { kind: "details"; account: string; token: string } | { kind: "home" };

export class App {
  session: Session | null = null;
  /** Every account, for the operator's picker. */
  accountList: Account[] = [];
  live: LiveTokens | null = null;
  /** The shown account, when known (the operator's list, or the session's own). */
  account: Account | null = null;
  readonly prefs = new Map<string, ListPrefs>();
  private screen: Screen | null = null;
  private readonly header = document.getElementById("header")!;
  readonly main = document.getElementById("main")!;

  start(): void {
    window.addEventListener("hashchange", () => this.route());
    this.route();
  }

  // ------------------------------------------------------------ session

  async signIn(secret: string): Promise<Failure | null> {
    useSecret(secret);
    try {
      const v = await tokens.verifyToken({ secret }, { signal: sessionSignal() });
      if (!v.valid || !v.token || !v.account) {
        forgetSecret();
        return failure(new Error("not valid"));
      }
      const self = v.token;
      const account = v.account;
      const operator = account.type === AccountType.OPERATIONS && self.modules.includes("platform-account-management");
      this.session = {
        self,
        account,
        operator,
        canManage: operator || self.modules.includes("access-management"),
      };
      if (operator) await this.loadAccounts();
      performance.mark("signed-in");
      this.route();
      // Keyboard and screen-reader users start at the page's heading, not
      // at the top of the document (the sign-in form they were in is gone).
      this.main.querySelector<HTMLElement>("#main-heading")?.focus();
      return null;
    } catch (err) {
      forgetSecret();
      this.session = null;
      return failure(err);
    }
  }

  signOut(message = "You have signed out. The token secret has been forgotten."): void {
    forgetSecret();
    this.session = null;
    this.accountList = [];
    this.account = null;
    this.stopLive();
    this.prefs.clear();
    for (const d of document.querySelectorAll("dialog")) d.remove();
    if (location.hash !== "" && location.hash !== "#/") history.replaceState(null, "", "#/");
    this.route();
    toast(message, "info");
  }

  /** The credential stopped working mid-session (revoked, disabled). */
  signedOutBy(f: Failure): void {
    if (!this.session) return;
    this.signOut(f.sentence);
  }

  async loadAccounts(): Promise<void> {
    const all: Account[] = [];
    let pageToken = "";
    do {
      const r = await accounts.listAccounts({ pageSize: 1000, pageToken }, { signal: sessionSignal() });
      all.push(...r.accounts);
      pageToken = r.nextPageToken;
    } while (pageToken !== "");
    all.sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    this.accountList = all;
  }

  /**
   * An account the picker does not know (made elsewhere since sign-in, or
   * named in the URL): the list is read again, and the header follows.
   */
  private async refreshAccounts(wanted: string): Promise<void> {
    try {
      await this.loadAccounts();
    } catch {
      return; // the list's own stream says what is wrong
    }
    if (this.live?.accountId !== wanted) return;
    this.account = this.accountList.find((a) => a.id === wanted) ?? null;
    this.renderHeader();
  }

  // -------------------------------------------------------------- routes

  private parse(): Route {
    const m = /^#\/(ACC-\d{4}-\d{4})\/tokens(?:\/(TKN-\d{4}-\d{4}))?\/?$/.exec(location.hash);
    if (!m) return { kind: "home" };
    return m[2] ? { kind: "details", account: m[1], token: m[2] } : { kind: "list", account: m[1] };
  }

  navigate(hash: string): void {
    if (location.hash === hash) this.route();
    else location.hash = hash;
  }

  listHash(account = this.live?.accountId ?? this.session?.account.id ?? ""): string {
    return `#/${account}/tokens`;
  }

  route(): void {
    this.screen?.leave();
    this.screen = null;
    this.renderHeader();
    const s = this.session;
    if (!s) {
      this.stopLive();
      this.screen = signInView(this);
      return;
    }
    if (!s.canManage) {
      this.stopLive();
      this.screen = noAccessView(this, s);
      return;
    }
    const r = this.parse();
    if (r.kind === "home") {
      history.replaceState(null, "", this.listHash(s.account.id));
      this.route();
      return;
    }
    this.account =
      this.accountList.find((a) => a.id === r.account) ?? (s.account.id === r.account ? s.account : null);
    if (s.operator && !this.account) void this.refreshAccounts(r.account);
    this.ensureLive(r.account);
    this.renderHeader();
    this.screen = r.kind === "list" ? listView(this, r.account) : detailsView(this, r.account, r.token);
  }

  private ensureLive(accountId: string): void {
    if (this.live && this.live.accountId === accountId && this.live.state !== "failed") return;
    this.stopLive();
    this.live = new LiveTokens(accountId, (f) => this.signedOutBy(f));
    this.live.start();
  }

  private stopLive(): void {
    this.live?.stop();
    this.live = null;
  }

  // -------------------------------------------------------------- header

  renderHeader(): void {
    const s = this.session;
    const right: HTMLElement[] = [];
    // The header is made anew: whoever was using the picker keeps it.
    const pickerHadFocus = document.activeElement?.id === "account-picker";
    if (s) {
      if (s.operator && this.accountList.length > 0) {
        const current = this.live?.accountId ?? s.account.id;
        // One the list does not hold (yet) is shown as itself, never as
        // another account.
        const known = this.accountList.some((a) => a.id === current);
        const select = h(
          "select",
          {
            id: "account-picker",
            onchange: ((e: Event) => this.navigate(this.listHash((e.target as HTMLSelectElement).value))) as EventListener,
          },
          known ? null : h("option", { value: current, selected: true }, current),
          this.accountList.map((a) =>
            h("option", { value: a.id, selected: a.id === current }, `${a.name} (${a.id})`),
          ),
        );
        right.push(h("div", { class: "account-picker" }, h("label", { for: "account-picker" }, "Account"), select));
      } else if (s.canManage) {
        right.push(h("p", { class: "account-name" }, h("span", { class: "muted" }, "Account "), `${s.account.name} (${s.account.id})`));
      }
      right.push(
        h(
          "p",
          { class: "signed-in" },
          h("span", { class: "muted" }, "Signed in as "),
          h("span", { class: "mono" }, s.self.id),
          s.operator ? h("span", { class: "badge badge-operator" }, "Operator") : null,
        ),
        h("button", { type: "button", class: "btn btn-secondary", id: "sign-out", onclick: (() => this.signOut()) as EventListener }, "Sign out"),
      );
    }
    fill(
      this.header,
      h(
        "div",
        { class: "topbar" },
        h("p", { class: "brand" }, h("span", { class: "brand-mark", "aria-hidden": "true" }, "t"), "tokend"),
        s ? h("div", { class: "topbar-right" }, right) : null,
      ),
    );
    if (pickerHadFocus) document.getElementById("account-picker")?.focus();
  }

  /** How the page names an actor (a token id, or "bootstrap"). */
  actorName(id: string): string {
    if (!id) return "someone";
    if (id === "bootstrap") return "tokend's first start (bootstrap)";
    if (this.session && id === this.session.self.id) return `${id} (the token you signed in with)`;
    const t = this.live?.tokens.get(id) ?? this.live?.deleted.get(id)?.token;
    return t ? `${t.name} (${id})` : id;
  }
}
