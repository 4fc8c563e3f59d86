// A token's details page: General (id, status, modules, the API endpoint),
// Details (who created and last changed it, and when; last access) and the
// Audit trail (views/audit.ts), with the Actions dropdown. Kept live: a
// change made anywhere shows at once, and a token someone else deletes says
// who deleted it and when.

import { sessionSignal, tokens } from "../api";
import type { App, Screen } from "../app";
import { copyText, fill, formatTime, h, timeEl } from "../dom";
import { failure } from "../errors";
import type { AuditEntry } from "../gen/apitokens/v1/common_pb";
import { TokenStatus, type Token } from "../gen/apitokens/v1/tokens_pb";
import type { Deletion } from "../live";
import { tabSet } from "../tabs";
import { menuButton, refreshMenu, statusBadge, tokenIcon } from "../ui";
import { tokenActions } from "./actions";
import { auditTrail } from "./audit";

export function detailsView(app: App, accountId: string, tokenId: string): Screen {
  const live = app.live!;
  const listHash = `#/${accountId}/tokens`;
  let token: Token | undefined = live.tokens.get(tokenId);
  let fetched = false;
  let tombstone: Token | undefined;
  let askedTombstone = false;
  const audit = auditTrail(app, tokenId, () => live.tokens.get(tokenId) ?? live.deleted.get(tokenId)?.token ?? token ?? tombstone);
  const tabs = tabSet(
    "Token information",
    [
      { key: "general", label: "General" },
      { key: "details", label: "Details" },
      { key: "audit", label: "Audit trail" },
    ] as const,
    (k) => {
      if (k === "audit") audit.show();
    },
  );
  tabs.panels.audit.append(audit.el);

  const crumbName = h("span", { "aria-current": "page" }, token?.name ?? tokenId);
  // The head's nodes are made once and updated in place, as the list reuses
  // its rows: a live change (the watch confirming a disable, a new last
  // access) must not swap the Actions button out from under the pointer or
  // take the keyboard focus off it.
  const heading = h("h1", { id: "main-heading", tabindex: "-1" }, token?.name ?? tokenId);
  let icon: HTMLElement = h("span", { hidden: true });
  let iconOf = "";
  let badge: HTMLElement = h("span", { hidden: true });
  const actions = menuButton(
    h("span", {}, "Actions ", h("span", { "aria-hidden": "true", class: "chevron" }, "▾")),
    `Actions for API token ${token?.name ?? tokenId}`,
    () => {
      const now = live.tokens.get(tokenId);
      return now ? tokenActions(app, now, { onDeleted: goBack }) : [];
    },
    "btn btn-secondary",
  );
  const head = h("div", { class: "page-head details-head" }, h("div", { class: "title-row" }, icon, heading, badge), actions);
  const banner = h("div", { id: "details-banner" });
  const body = h("div");
  fill(
    app.main,
    h(
      "section",
      { "aria-labelledby": "main-heading" },
      h(
        "nav",
        { "aria-label": "Breadcrumb", class: "breadcrumb" },
        h("ol", {}, h("li", {}, "Settings"), h("li", {}, h("a", { href: listHash }, "API tokens")), h("li", {}, crumbName)),
      ),
      head,
      banner,
      body,
    ),
  );

  const goBack = () => app.navigate(listHash);

  const renderHead = (t: Token | undefined, gone: boolean) => {
    const name = t?.name ?? tokenId;
    const nextIcon = t ? `${t.icon}\n${t.name}` : "";
    if (nextIcon !== iconOf) {
      iconOf = nextIcon;
      const next = t ? tokenIcon(t, true) : h("span", { hidden: true });
      icon.replaceWith(next);
      icon = next;
    }
    const nextBadge = t ? statusBadge(t.status) : h("span", { hidden: true });
    badge.replaceWith(nextBadge);
    badge = nextBadge;
    heading.textContent = name;
    crumbName.textContent = name;
    actions.hidden = !t || gone;
    refreshMenu(actions);
    for (const el of actions.querySelectorAll("[aria-haspopup=menu], [role=menu]")) {
      el.setAttribute("aria-label", `Actions for API token ${name}`);
    }
  };

  const fact = (label: string, ...value: (Node | string | null)[]) => [h("dt", {}, label), h("dd", {}, ...value)];
  const entry = (e: AuditEntry | undefined) =>
    e?.at ? h("span", {}, timeEl(e.at, "—", true), " by ", h("span", { class: "actor" }, app.actorName(e.by))) : h("span", { class: "muted" }, "Never");

  const renderBody = (t: Token) => {
    const endpoint = window.location.origin;
    const endpointField = h("input", { id: "endpoint", type: "text", readonly: true, value: endpoint, class: "mono" });
    const copied = h("span", { class: "copied", "aria-live": "polite" });
    const general = h(
      "dl",
      { class: "facts" },
      fact("ID", h("span", { class: "mono" }, t.id)),
      fact("Status", statusBadge(t.status)),
      fact(
        "Modules",
        t.modules.length ? h("ul", { class: "chips" }, t.modules.map((m) => h("li", { class: "chip" }, m))) : h("span", { class: "muted" }, "None"),
      ),
      fact("Description", t.description || h("span", { class: "muted" }, "None")),
      fact(
        "API endpoint",
        h("div", { class: "copy-row" }, h("label", { for: "endpoint", class: "visually-hidden" }, "API endpoint"), endpointField,
          h("button", {
            type: "button",
            class: "btn btn-secondary",
            id: "copy-endpoint",
            onclick: (async () => {
              copied.textContent = (await copyText(endpoint, endpointField)) ? "Copied" : "Select the text and copy it";
            }) as EventListener,
          }, "Copy")),
        copied,
        h("p", { class: "help" }, "gRPC, and gRPC-Web for browsers. Send the secret as authorization: Bearer <secret>."),
      ),
    );
    const a = t.audit;
    const details = h(
      "dl",
      { class: "facts" },
      fact("Created", entry(a?.created)),
      fact("Updated", entry(a?.updated)),
      a?.disabled ? fact("Last disabled", entry(a.disabled)) : null,
      a?.enabled ? fact("Last enabled", entry(a.enabled)) : null,
      a?.deleted ? fact("Deleted", entry(a.deleted)) : null,
      fact("Last access", timeEl(t.lastAccessTime, "Never", true)),
      fact("Expires", timeEl(t.expireTime, "Never", true)),
      t.replaces ? fact("Replaces", h("span", { class: "mono" }, t.replaces)) : null,
      t.replacedBy ? fact("Replaced by", h("span", { class: "mono" }, t.replacedBy)) : null,
    );
    fill(tabs.panels.general, general);
    fill(tabs.panels.details, details);
    // The tabs and panels stay put (and keep the focus) across live changes.
    if (tabs.list.parentElement !== body) fill(body, tabs.list, Object.values<HTMLElement>(tabs.panels));
  };

  const renderGone = (d: Deletion | undefined) => {
    const t = d?.token ?? token;
    renderHead(t, true);
    fill(
      banner,
      h(
        "div",
        { class: "notice notice-warning", role: "alert", id: "deleted-banner" },
        h(
          "p",
          {},
          d && d.actor
            ? `This API token was deleted by ${app.actorName(d.actor)} on ${formatTime(d.at)}. A deleted token can't be restored or reused.`
            : "This API token doesn't exist or was deleted. A deleted token can't be restored or reused.",
        ),
        h("p", {}, h("a", { href: listHash }, "Back to API tokens")),
      ),
    );
    if (t) renderBody(t);
    else fill(body);
  };

  const render = () => {
    const gone = live.deleted.get(tokenId);
    token = live.tokens.get(tokenId) ?? token;
    if (gone) {
      if (gone.mine) return; // this page deleted it: already on its way back to the list
      renderGone(gone);
      return;
    }
    if (live.state === "failed" && live.error) {
      renderHead(undefined, true);
      fill(banner, h("p", { class: "notice notice-error", role: "alert" }, live.error.sentence));
      fill(body);
      return;
    }
    if (!live.synced) {
      renderHead(token, false);
      if (!token) fill(body, h("p", { class: "muted" }, "Loading…"));
      return;
    }
    if (!live.tokens.has(tokenId)) {
      const t = tombstone;
      renderGone(t && { token: t, actor: t.audit?.deleted?.by ?? "", at: t.audit?.deleted?.at, mine: false });
      if (app.session?.operator && !askedTombstone) readTombstone();
      return;
    }
    fill(banner);
    renderHead(token, false);
    if (token) renderBody(token);
    if (!fetched) {
      fetched = true;
      // Last access is not an event: read it fresh once.
      tokens
        .getToken({ id: tokenId }, { signal: sessionSignal() })
        .then((t) => {
          const known = live.tokens.get(tokenId);
          if (known && known.revision <= t.revision) {
            live.applyLocal(t);
          }
        })
        .catch((err) => {
          // The list is authoritative: only a signed-out credential matters here.
          const f = failure(err);
          if (f.reason === "UNAUTHENTICATED") app.signedOutBy(f);
        });
    }
  };

  // An operator may still read a deleted token: its record and its trail.
  const readTombstone = () => {
    askedTombstone = true;
    tokens
      .getToken({ id: tokenId, showDeleted: true }, { signal: sessionSignal() })
      .then((t) => {
        if (t.status !== TokenStatus.DELETED || t.accountId !== accountId) return;
        tombstone = t;
        render();
      })
      .catch((err) => {
        // Not found: the page says so already.
        const f = failure(err);
        if (f.reason === "UNAUTHENTICATED") app.signedOutBy(f);
      });
  };

  const unsubscribe = live.subscribe((c) => {
    if (c.kind === "reset" || c.kind === "state" || (c.kind === "token" && c.id === tokenId)) {
      const hadFocus = document.activeElement;
      render();
      if (hadFocus instanceof HTMLElement && hadFocus.isConnected && document.activeElement !== hadFocus) hadFocus.focus();
    }
  });
  render();
  document.getElementById("main-heading")?.focus();
  return {
    leave: () => {
      unsubscribe();
      audit.leave();
    },
  };
}
