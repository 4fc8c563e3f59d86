// Errors in plain words. tokend puts a google.rpc.ErrorInfo (domain
// "apitokens") on every error it raises; its `reason` is what the page
// branches on and what a person reads a sentence for (docs/contract.md §9).
// tests/console.rs checks that every reason in src/error.rs has one here.

import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb";

/** One sentence per `reason` of src/error.rs. */
export const REASONS: Record<string, string> = {
  INVALID_ARGUMENT: "Something in the request is not valid.",
  TOKEN_NOT_FOUND: "This API token no longer exists, or it belongs to an account you can't see.",
  ACCOUNT_NOT_FOUND: "This account doesn't exist, or you can't see it.",
  ETAG_MISMATCH: "This API token was changed after you opened it, so nothing was changed. Review it and try again.",
  TOKEN_NOT_ACTIVE: "This API token is disabled, so it can't be disabled again or rolled. Enable it first.",
  TOKEN_NOT_DISABLED: "This API token is not disabled, so it can't be enabled.",
  ACCOUNT_DISABLED: "This account is disabled, so it can't get new API tokens.",
  MODULE_NOT_IN_ACCOUNT: "One of the modules you picked is not a module of this account.",
  MODULE_IN_USE: "A module can't be removed from the account while one of its API tokens holds it.",
  TOKEN_ID_TAKEN: "That token id was issued before and can't be used again.",
  REVISION_COMPACTED: "The live view was disconnected for too long; the list is being loaded again.",
  TOO_MANY_WATCHERS: "tokend is serving too many live views right now. The page will retry shortly.",
  TOKEN_IDS_EXHAUSTED:
    "tokend can't make new tokens: nearly every token ID has been used (IDs of deleted tokens are never reused). Ask your operator.",
  STORE_UNAVAILABLE:
    "tokend can't save changes right now. A change you just made may or may not have been saved: check the list before trying again.",
  SHUTTING_DOWN: "tokend is restarting. Try again in a moment.",
  LISTEN_FAILED: "tokend could not start listening for connections.",
  INTERNAL: "Something went wrong inside tokend. Try again; if it keeps happening, tell the operator.",
  UNAUTHENTICATED:
    "This token secret was not accepted. It may be mistyped, disabled or deleted, or its account may be disabled.",
  PERMISSION_DENIED: "The token you signed in with isn't allowed to do this.",
  CREDENTIAL_REVOKED: "The token you signed in with was disabled or deleted, so you have been signed out.",
  CREDENTIAL_EXPIRED: "The token you signed in with has expired. Sign in with another one.",
  LIFETIME_EXCEEDED: "This account limits how long its API tokens may live. Pick an earlier expiry date.",
  TOKEN_REPLACED: "This API token was already replaced by a new one. Roll the new token instead.",
  TOKEN_EXPIRED: "This API token has expired and is about to be deleted, so it can't be changed.",
};

/** Sentences for failures that carry no ErrorInfo (the network, the gRPC layer). */
const CODES: Partial<Record<Code, string>> = {
  [Code.Unavailable]: "Can't reach tokend. Check the connection and try again.",
  [Code.DeadlineExceeded]: "tokend took too long to answer. The change may or may not have been made: check before retrying.",
  [Code.Canceled]: "The request was cancelled before tokend answered. The change may or may not have been made.",
  [Code.OutOfRange]: "The request is too large.",
  [Code.Unauthenticated]: REASONS.UNAUTHENTICATED,
  [Code.PermissionDenied]: REASONS.PERMISSION_DENIED,
  [Code.NotFound]: "Not found, or you can't see it.",
  [Code.ResourceExhausted]: "tokend is busy. Try again shortly.",
};

export interface Failure {
  code: Code;
  /** The ErrorInfo reason, or "" when the error carried none. */
  reason: string;
  metadata: Record<string, string>;
  /** What to tell the person. */
  sentence: string;
  /** The request field a bad value was in (BadRequest), or "". */
  field: string;
  /** What is wrong with it, without the field's name (for beside the field). */
  problem: string;
}

/** Reads the code, reason and metadata of any thrown value. */
export function failure(err: unknown): Failure {
  const e = ConnectError.from(err);
  const info = e.findDetails(ErrorInfoSchema)[0];
  const reason = info?.domain === "apitokens" ? info.reason : "";
  const metadata = info?.metadata ?? {};
  let sentence = REASONS[reason] ?? CODES[e.code] ?? "Something went wrong. Try again.";
  let field = "";
  let problem = "";
  if (reason === "INVALID_ARGUMENT") {
    const v = e.findDetails(BadRequestSchema)[0]?.fieldViolations[0];
    if (v) {
      sentence = `${FIELDS[v.field] ?? v.field}: ${v.description}`;
      field = v.field;
      problem = v.description;
    } else if (e.rawMessage) sentence = `${sentence} ${e.rawMessage}`;
  }
  return { code: e.code, reason, metadata, sentence, field, problem };
}

/** Request fields as the page's labels name them. */
const FIELDS: Record<string, string> = {
  name: "Name",
  description: "Description",
  icon: "Logo URL",
  modules: "Modules",
  "token.name": "Name",
  "token.description": "Description",
  "token.icon": "Logo URL",
  "token.modules": "Modules",
  expire_time: "Expires",
  ttl: "Expires",
  "token.expire_time": "Expires",
  grace: "The old secret keeps working for",
};

/** True when the caller's own credential is no longer good. */
export function isSignedOut(f: Failure): boolean {
  return f.code === Code.Unauthenticated;
}
