// Settings > API tokens: the account's live tokens, filtered by status,
// searched by name, a page at a time. Rows come and go as tokens are
// created, changed, disabled or deleted anywhere; no reload.

import type { App, ListPrefs, Screen } from "../app";
import { fill, h, timeEl, toDate } from "../dom";
import { TokenStatus, type Token } from "../gen/apitokens/v1/tokens_pb";
import type { Change } from "../live";
import { menuButton, refreshMenu, modulesSummary, statusBadge, tokenIcon } from "../ui";
import { tokenActions } from "./actions";
import { addTokenWizard } from "./wizard";

const PAGE_SIZES = [10, 25, 50, 100];

export function listView(app: App, accountId: string): Screen {
  const live = app.live!;
  let prefs = app.prefs.get(accountId);
  if (!prefs) {
    prefs = { search: "", status: "all", pageSize: 10, page: 0 };
    app.prefs.set(accountId, prefs);
  }
  const p: ListPrefs = prefs;
  const accountName = app.account ? `${app.account.name} (${accountId})` : accountId;

  const search = h("input", { id: "search", type: "search", value: p.search, autocomplete: "off" });
  const status = h(
    "select",
    { id: "status-filter" },
    h("option", { value: "all", selected: p.status === "all" }, "All statuses"),
    h("option", { value: "active", selected: p.status === "active" }, "Active"),
    h("option", { value: "disabled", selected: p.status === "disabled" }, "Disabled"),
  );
  const pageSize = h(
    "select",
    { id: "page-size" },
    PAGE_SIZES.map((n) => h("option", { value: n, selected: n === p.pageSize }, String(n))),
  );
  const liveBadge = h("p", { class: "live-state", id: "live-state" });
  const count = h("p", { class: "count", id: "token-count" });
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "tokens", id: "tokens-table" },
    h("caption", { class: "visually-hidden" }, `API tokens of account ${accountName}`),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col", class: "col-icon" }, h("span", { class: "visually-hidden" }, "Logo")),
        h("th", { scope: "col" }, "Name"),
        h("th", { scope: "col" }, "ID"),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col" }, "Modules"),
        h("th", { scope: "col" }, "Last access"),
        h("th", { scope: "col" }, "Created"),
        h("th", { scope: "col", class: "col-actions" }, h("span", { class: "visually-hidden" }, "Actions")),
      ),
    ),
    tbody,
  );
  const empty = h("p", { class: "empty", hidden: true });
  const failed = h("div", { role: "alert", class: "notice notice-error", hidden: true });
  const prev = h("button", { type: "button", class: "btn btn-secondary", id: "prev-page" }, "Previous");
  const next = h("button", { type: "button", class: "btn btn-secondary", id: "next-page" }, "Next");
  const range = h("p", { class: "range", id: "page-range", "aria-live": "polite" });
  const addButton = h("button", { type: "button", class: "btn btn-primary", id: "add-token" }, "Add token");

  fill(
    app.main,
    h(
      "section",
      { "aria-labelledby": "main-heading" },
      h(
        "nav",
        { "aria-label": "Breadcrumb", class: "breadcrumb" },
        h("ol", {}, h("li", {}, "Settings"), h("li", {}, h("span", { "aria-current": "page" }, "API tokens"))),
      ),
      h(
        "div",
        { class: "page-head" },
        h(
          "div",
          {},
          h("h1", { id: "main-heading", tabindex: "-1" }, "API tokens"),
          h("p", { class: "muted" }, `Tokens that let applications call the API for account ${accountName}.`),
        ),
        addButton,
      ),
      h(
        "div",
        { class: "toolbar", role: "search", "aria-label": "Filter API tokens" },
        h("div", { class: "field" }, h("label", { for: "search" }, "Search by name"), search),
        h("div", { class: "field" }, h("label", { for: "status-filter" }, "Status"), status),
        h("div", { class: "toolbar-end" }, liveBadge, count),
      ),
      failed,
      h("div", { class: "table-wrap" }, table),
      empty,
      h(
        "div",
        { class: "pager" },
        h("div", { class: "field field-inline" }, h("label", { for: "page-size" }, "Rows per page"), pageSize),
        range,
        h("div", { class: "pager-buttons" }, prev, next),
      ),
    ),
  );

  type Row = { tr: HTMLTableRowElement; cells: HTMLElement[]; link: HTMLAnchorElement; description: HTMLElement };
  const rows = new Map<string, Row>();

  const matches = (t: Token): boolean => {
    if (p.status === "active" && t.status !== TokenStatus.ACTIVE) return false;
    if (p.status === "disabled" && t.status !== TokenStatus.DISABLED) return false;
    const q = p.search.trim().toLocaleLowerCase();
    return q === "" || t.name.toLocaleLowerCase().includes(q);
  };

  const fillRow = ({ cells, link, description }: Row, t: Token) => {
    fill(cells[0], tokenIcon(t));
    // The name link is the row's own node, like its ••• button: a live
    // change must not take the keyboard focus (or a click) away from it.
    link.textContent = t.name;
    description.textContent = t.description;
    description.hidden = t.description === "";
    fill(cells[2], h("span", { class: "mono" }, t.id));
    // A rolled token and its successor share a name: the old one says it
    // was replaced, by which, and until when its secret works.
    fill(
      cells[3],
      statusBadge(t.status),
      t.replacedBy
        ? h("span", { class: "replaced" }, `Replaced by ${t.replacedBy}, works until `, timeEl(t.expireTime))
        : null,
    );
    fill(cells[4], h("span", { title: t.modules.join(", ") }, modulesSummary(t.modules)));
    fill(cells[5], timeEl(t.lastAccessTime));
    fill(cells[6], timeEl(t.audit?.created?.at, "—"));
  };

  const rowFor = (t: Token) => {
    let r = rows.get(t.id);
    if (!r) {
      const labels = ["Logo", "Name", "ID", "Status", "Modules", "Last access", "Created"];
      const cells = labels.map((l, i) => h(i === 1 ? "th" : "td", { "data-label": l, scope: i === 1 ? "row" : null }));
      const actions = h(
        "td",
        { class: "col-actions" },
        menuButton("•••", `Actions for API token ${t.name}`, () => {
          const now = live.tokens.get(t.id);
          return now ? tokenActions(app, now, { onDeleted: () => undefined }) : [];
        }),
      );
      const tr = h("tr", { "data-token-id": t.id }, cells, actions);
      const link = h("a", { href: `#/${accountId}/tokens/${t.id}`, class: "token-name" });
      const description = h("span", { class: "token-description" });
      cells[1].append(link, description);
      r = { tr, cells, link, description };
      rows.set(t.id, r);
    }
    fillRow(r, t);
    refreshMenu(r.tr.querySelector(".menu-wrap"));
    const trigger = r.tr.querySelector<HTMLButtonElement>("[aria-haspopup=menu]");
    trigger?.setAttribute("aria-label", `Actions for API token ${t.name}`);
    return r.tr;
  };

  const render = () => {
    const all = [...live.tokens.values()].sort(
      (a, b) => created(b) - created(a) || a.id.localeCompare(b.id),
    );
    const shown = all.filter(matches);
    const pages = Math.max(1, Math.ceil(shown.length / p.pageSize));
    p.page = Math.min(p.page, pages - 1);
    const page = shown.slice(p.page * p.pageSize, (p.page + 1) * p.pageSize);

    // Reuse rows (by id) so an open menu or focused button survives an update.
    const wanted = page.map(rowFor);
    const focused = document.activeElement;
    wanted.forEach((tr, i) => {
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] ?? null);
    });
    while (tbody.children.length > wanted.length) tbody.lastElementChild!.remove();
    for (const [id, r] of rows) if (!r.tr.isConnected && !live.tokens.has(id)) rows.delete(id);
    if (focused instanceof HTMLElement && !focused.isConnected) {
      document.getElementById("main-heading")?.focus();
    }

    const loading = !live.synced;
    table.hidden = loading || shown.length === 0;
    empty.hidden = loading ? false : shown.length > 0;
    empty.textContent = loading
      ? "Loading API tokens…"
      : all.length === 0
        ? "This account has no API tokens yet."
        : "No API tokens match the search and status filter.";
    count.textContent = loading ? "" : `${all.length} ${all.length === 1 ? "API token" : "API tokens"}`;
    range.textContent =
      shown.length === 0
        ? ""
        : `${p.page * p.pageSize + 1}–${p.page * p.pageSize + page.length} of ${shown.length}`;
    prev.disabled = p.page === 0;
    next.disabled = p.page >= pages - 1;
    renderState();
    if (live.synced && !marked) {
      marked = true;
      performance.mark("tokens-usable");
    }
  };
  let marked = false;

  const renderState = () => {
    const labels: Record<string, string> = {
      connecting: "Connecting…",
      live: "Live",
      reconnecting: "Reconnecting…",
      failed: "Not live",
      stopped: "Not live",
    };
    liveBadge.textContent = labels[live.state];
    liveBadge.className = `live-state live-${live.state}`;
    liveBadge.dataset.snapshots = String(live.snapshots);
    if (live.state === "failed" && live.error) {
      failed.hidden = false;
      failed.textContent = live.error.sentence;
      table.hidden = true;
      empty.hidden = true;
      addButton.disabled = true;
    }
  };

  let frame = 0;
  const schedule = () => {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      render();
    });
  };
  const unsubscribe = live.subscribe((c: Change) => {
    if (c.kind === "state") renderState();
    else schedule();
  });

  search.addEventListener("input", () => {
    p.search = search.value;
    p.page = 0;
    render();
  });
  status.addEventListener("change", () => {
    p.status = status.value as ListPrefs["status"];
    p.page = 0;
    render();
  });
  pageSize.addEventListener("change", () => {
    p.pageSize = Number(pageSize.value);
    p.page = 0;
    render();
  });
  prev.addEventListener("click", () => {
    p.page -= 1;
    render();
  });
  next.addEventListener("click", () => {
    p.page += 1;
    render();
  });
  addButton.addEventListener("click", () => addTokenWizard(app, accountId));

  render();
  return {
    leave: () => {
      unsubscribe();
      cancelAnimationFrame(frame);
    },
  };
}

function created(t: Token): number {
  const at = t.audit?.created?.at;
  return at ? toDate(at).getTime() : 0;
}
