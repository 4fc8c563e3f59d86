// Roll: replace a token by a new one without an outage. The dialog asks how
// long the old secret keeps working, rolls with the etag the page showed,
// then shows the new secret this once and when the old one stops. Closing
// the dialog drops the secret from the page for good.

import { sessionSignal, tokens } from "../api";
import type { App } from "../app";
import { fill, formatTime, h } from "../dom";
import { failure, isSignedOut } from "../errors";
import { TokenStatus, type Token } from "../gen/apitokens/v1/tokens_pb";
import { button, modal, secretBlock, toast } from "../ui";

/** How long the old secret may keep working (tokend allows up to 7 days). */
const GRACES: [label: string, seconds: number][] = [
  ["1 hour", 3600],
  ["1 day", 86_400],
  ["7 days", 7 * 86_400],
  ["Stop at once (delete the old token)", 0],
];

export function rollDialog(app: App, t: Token): void {
  const error = h("p", { class: "notice notice-error", role: "alert", hidden: true });
  let busy = false;
  // Once the new secret is shown, only Done closes: an Escape would lose it.
  let secretShown = false;
  const m = modal("Roll API token", { wide: true, onCancel: () => !busy && !secretShown });
  m.dialog.id = "roll-dialog";
  const grace = h(
    "select",
    { id: "roll-grace", "aria-describedby": "roll-grace-help" },
    GRACES.map(([label, seconds]) => h("option", { value: String(seconds) }, label)),
  );
  grace.value = "86400";
  fill(
    m.body,
    h("p", {}, "Replace API token ", h("strong", {}, t.name), ` (${t.id}) with a new one?`),
    h(
      "p",
      {},
      "The new token gets the same name, description, logo and modules, and a new secret. Give your applications the new secret before the old one stops working.",
    ),
    h(
      "div",
      { class: "field" },
      h("label", { for: "roll-grace" }, "The old secret keeps working for"),
      grace,
      h("p", { id: "roll-grace-help", class: "help" }, "Then it is refused everywhere, and the old token is deleted."),
    ),
    error,
  );
  const cancel = button("Cancel", () => m.close(), "secondary", { id: "roll-cancel" });
  const confirm = button("Roll", async () => {
    busy = true;
    confirm.disabled = true;
    error.hidden = true;
    try {
      const r = await tokens.rollToken(
        { id: t.id, etag: t.etag, grace: { seconds: BigInt(grace.value) } },
        { signal: sessionSignal() },
      );
      for (const changed of [r.token, r.replaced]) if (changed) app.live?.applyLocal(changed);
      busy = false;
      showSecret(r.secret, r.token?.id ?? "", r.replaced);
    } catch (err) {
      busy = false;
      confirm.disabled = false;
      const f = failure(err);
      if (isSignedOut(f)) {
        m.close();
        app.signedOutBy(f);
        return;
      }
      fill(error, f.sentence);
      error.hidden = false;
    }
  }, "primary", { id: "roll-confirm" });
  m.footer.append(cancel, confirm);
  grace.focus();

  const showSecret = (secret: string, id: string, old: Token | undefined) => {
    const { element, field } = secretBlock(secret);
    secretShown = true;
    const oldFate =
      !old || old.status === TokenStatus.DELETED
        ? `The old token ${t.id} was deleted: its secret no longer works.`
        : `The old secret keeps working until ${formatTime(old.expireTime)}.`;
    fill(
      m.body,
      h("p", {}, "API token ", h("strong", {}, t.name), ` was rolled: the new token is ${id}.`),
      h("p", { id: "roll-old-fate" }, oldFate),
      element,
    );
    fill(m.footer, button("Done", () => m.close(), "primary", { id: "roll-done" }));
    field.focus();
    field.select();
    toast(`API token '${t.name}' (${t.id}) was rolled successfully.`);
  };

  void m.closed.then(() => fill(m.body));
}
