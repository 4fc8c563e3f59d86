// tokend's public API over gRPC-Web, on the page's own origin (the console
// is served by the tokend it talks to, so no CORS grant is needed).
//
// The signed-in secret lives only here, in memory: it is sent in the
// `authorization` header of each call and nowhere else (never a URL, never
// storage, never a log). Signing out forgets it and aborts every call.

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AccountService } from "./gen/apitokens/v1/accounts_pb";
import { TokenService } from "./gen/apitokens/v1/tokens_pb";

let secret: string | null = null;
let session = new AbortController();

const bearer: Interceptor = (next) => async (req) => {
  if (secret !== null) req.header.set("authorization", `Bearer ${secret}`);
  return next(req);
};

const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  interceptors: [bearer],
  // Unary calls only: streams pass no timeout and stay open.
  defaultTimeoutMs: undefined,
});

export const tokens: Client<typeof TokenService> = createClient(TokenService, transport);
export const accounts: Client<typeof AccountService> = createClient(AccountService, transport);

/** Starts using `s` for every call. */
export function useSecret(s: string): void {
  secret = s;
}

/** Forgets the secret and cancels every call still running with it. */
export function forgetSecret(): void {
  secret = null;
  session.abort();
  session = new AbortController();
}

/** Aborted when the person signs out: pass to every call. */
export function sessionSignal(): AbortSignal {
  return session.signal;
}

/** What a token secret looks like (docs/contract.md §1): checked before sending. */
export const SECRET_SHAPE = /^idt:TKN-\d{4}-\d{4}:[0-9A-Za-z]{46}$/;
