// Sign-in: a token secret, pasted. It is checked for shape here, then by
// tokend (VerifyToken, authenticated by the secret itself), and kept only in
// this tab's memory (src/api.ts).

import { SECRET_SHAPE } from "../api";
import type { App, Screen, Session } from "../app";
import { fill, h } from "../dom";

export function signInView(app: App): Screen {
  const input = h("input", {
    id: "secret",
    name: "secret",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "secret-help secret-error",
  });
  const error = h("p", { id: "secret-error", class: "field-error", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
  const showError = (text: string) => {
    error.textContent = text;
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  };
  const form = h(
    "form",
    { class: "card signin", novalidate: true, "aria-labelledby": "main-heading" },
    h("h1", { id: "main-heading", tabindex: "-1" }, "Sign in to tokend"),
    h(
      "p",
      {},
      "Paste an API token secret. A token with the access-management module manages its own account's API tokens; the operator's token manages every account's.",
    ),
    h("div", { class: "field" }, h("label", { for: "secret" }, "Token secret"), input, error),
    h(
      "p",
      { id: "secret-help", class: "help" },
      "It starts with idt:TKN-. The page keeps it in this tab's memory only: signing out or reloading forgets it.",
    ),
    h("div", { class: "form-actions" }, submit),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const secret = input.value.trim();
    if (!SECRET_SHAPE.test(secret)) {
      showError("That is not a token secret: a secret starts with idt:TKN- and is 64 characters long.");
      return;
    }
    submit.disabled = true;
    submit.textContent = "Signing in…";
    performance.mark("signin-submit");
    const f = await app.signIn(secret);
    input.value = "";
    if (f) {
      submit.disabled = false;
      submit.textContent = "Sign in";
      showError(f.sentence);
    }
  });
  fill(app.main, form);
  input.focus();
  performance.mark("signin-ready");
  return { leave: () => undefined };
}

/** Signed in with a token that can only verify secrets. */
export function noAccessView(app: App, s: Session): Screen {
  fill(
    app.main,
    h(
      "section",
      { class: "card", "aria-labelledby": "main-heading" },
      h("h1", { id: "main-heading", tabindex: "-1" }, "API tokens"),
      h(
        "p",
        { role: "alert", class: "notice notice-warning" },
        `The token you signed in with (${s.self.name}, ${s.self.id}) doesn't have the access-management module, so it can't see or change API tokens. Sign in with a token that has it, or with the operator's token.`,
      ),
    ),
  );
  return { leave: () => undefined };
}
