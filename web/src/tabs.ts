// WAI-ARIA tabs with automatic activation: each tab controls its own panel
// (the others are hidden), only the selected tab is in the Tab order, and
// the arrow keys, Home and End move between tabs and select them. The tabs
// and panels are made once, so a page that re-renders its panels' content
// (a live change) keeps the focus where it was.

import { h, newId } from "./dom";

export interface TabSet<K extends string> {
  /** The role=tablist element. */
  readonly list: HTMLElement;
  /** One role=tabpanel per tab, in order. */
  readonly panels: Record<K, HTMLElement>;
  readonly selected: K;
  select(key: K, focus?: boolean): void;
}

export function tabSet<K extends string>(
  label: string,
  items: readonly { key: K; label: string }[],
  onSelect: (key: K) => void,
): TabSet<K> {
  const keys = items.map((x) => x.key);
  const buttons = {} as Record<K, HTMLButtonElement>;
  const panels = {} as Record<K, HTMLElement>;
  for (const x of items) {
    const tabId = newId(`tab-${x.key}`);
    const panelId = newId(`panel-${x.key}`);
    buttons[x.key] = h(
      "button",
      {
        type: "button",
        role: "tab",
        id: tabId,
        "data-tab": x.key,
        "aria-selected": "false",
        "aria-controls": panelId,
        tabindex: "-1",
        onclick: (() => set.select(x.key, true)) as EventListener,
      },
      x.label,
    );
    panels[x.key] = h("div", { role: "tabpanel", id: panelId, "aria-labelledby": tabId, class: "card", tabindex: "0", hidden: true });
  }
  const list = h("div", { role: "tablist", "aria-label": label, class: "tabs" }, keys.map((k) => buttons[k]));
  list.addEventListener("keydown", (e) => {
    const i = keys.indexOf(set.selected);
    const to: Record<string, number> = { ArrowRight: i + 1, ArrowLeft: i - 1 + keys.length, Home: 0, End: keys.length - 1 };
    if (!(e.key in to)) return;
    e.preventDefault();
    set.select(keys[to[e.key] % keys.length], true);
  });
  const set = {
    list,
    panels,
    selected: keys[0],
    select(key: K, focus = false) {
      set.selected = key;
      for (const k of keys) {
        const on = k === key;
        buttons[k].setAttribute("aria-selected", String(on));
        buttons[k].tabIndex = on ? 0 : -1;
        panels[k].hidden = !on;
      }
      if (focus) buttons[key].focus();
      onSelect(key);
    },
  };
  set.select(keys[0]);
  return set;
}
