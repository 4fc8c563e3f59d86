#!/usr/bin/env node
// A Node.js client for tokend with @grpc/grpc-js, loading the repository's
// proto/ at run time with @grpc/proto-loader (nothing generated is
// committed): create a token, watch, delete it and see the deletion arrive,
// resume a stream from a revision, and read the ErrorInfo reason of an
// error (what a client branches on).
//
//   (cd examples/node && npm ci)
//   node examples/node/tokend_demo.mjs --server localhost:50051 \
//       --token-file tokend-data/operator.token
//
// It creates an account ("Node Inc.", left behind: accounts are not
// deleted), so it needs an operator's secret, such as the one above. Like
// the `tokend` CLI, it reads ./tokend-data/operator.token by itself for a
// server on this machine only, and calls a server started with --tls-cert
// as https://host:port (--ca-file, else Node's bundled roots; --client-cert
// and --client-key when it asks for client certificates). Each call has a
// deadline (--timeout, 30 s): a server that never answers fails the call
// rather than hang it. A failed call ends the example with its status code
// and message.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { isIP } from "node:net";
import path from "node:path";
import { parseArgs } from "node:util";
import assert from "node:assert/strict";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

// The same flags and environment as the `tokend` CLI's; the server as
// host:port or as the CLI's URL.
const env = process.env;
const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: env.TOKEND_SERVER ?? "localhost:50051" },
    "token-file": { type: "string", default: env.TOKEND_TOKEN_FILE },
    "ca-file": { type: "string", default: env.TOKEND_CA_FILE },
    "client-cert": { type: "string", default: env.TOKEND_CLIENT_CERT },
    "client-key": { type: "string", default: env.TOKEND_CLIENT_KEY },
    // Each call's deadline, in seconds: `10` or the CLI's `10s`.
    timeout: { type: "string", default: env.TOKEND_TIMEOUT ?? "30s" },
  },
});
const usage = (why) => {
  console.error(`tokend_demo: ${why}`);
  process.exit(2);
};
const timeoutMs = Number(args.timeout.replace(/s$/, "")) * 1000;
if (!(timeoutMs > 0)) usage(`--timeout: '${args.timeout}' is not a number of seconds above zero, such as 10s`);

// A call that failed ends the example with its status, not a stack trace
// (anything else is a bug in this example: its stack is shown).
process.on("uncaughtException", (err) => {
  if (typeof err?.code !== "number" || !("details" in err)) {
    console.error(err);
    process.exit(1);
  }
  const code = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) ?? err.code;
  const hint = err.code === grpc.status.DEADLINE_EXCEEDED ? " (no answer within --timeout)" : "";
  console.error(`tokend_demo: ${code}: ${err.details}${hint}`);
  process.exit(1);
});
const tls = /^https:\/\//i.test(args.server);
const target = args.server.replace(/^https?:\/\//i, "").replace(/\/$/, "");

/** Plaintext for host:port or http://; TLS for https://, with --ca-file's
 * roots (or Node's bundled ones) and a client certificate when given. */
function channelCredentials() {
  if (!tls) {
    if (args["ca-file"] || args["client-cert"] || args["client-key"]) {
      usage(`--ca-file, --client-cert and --client-key apply to an https:// server; ${args.server} is plaintext`);
    }
    return grpc.credentials.createInsecure();
  }
  if (!args["client-cert"] !== !args["client-key"]) usage("--client-cert and --client-key go together");
  // Each file checked as the CLI does: grpc-js takes a wrong CA file for none.
  const read = (flag, label) => {
    const file = args[flag];
    if (!file) return null;
    let data;
    try {
      data = readFileSync(file);
    } catch (e) {
      usage(`--${flag}: ${e.message}`);
    }
    if (!data.includes(`${label}-----`)) usage(`--${flag}: ${file} holds no PEM ${label.toLowerCase()}`);
    return data;
  };
  return grpc.credentials.createSsl(read("ca-file", "CERTIFICATE"), read("client-key", "PRIVATE KEY"), read("client-cert", "CERTIFICATE"));
}

/** Whether host:port names this machine (the CLI's rule). */
function isLoopback(hostPort) {
  const host = hostPort.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1" || hostPort === "::1";
}

const definition = protoLoader.loadSync(
  ["apitokens/v1/tokens.proto", "apitokens/v1/accounts.proto"],
  { includeDirs: [path.join(ROOT, "proto")], keepCase: true, enums: String, longs: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).apitokens.v1;

// Every tokend error carries a google.rpc.Status in `grpc-status-details-bin`
// whose details hold an ErrorInfo (domain "apitokens"): its `reason` is
// stable, the message is for people. The google.rpc protos are the ones the
// web console uses (web/proto/).
const rpc = protobuf.loadSync([
  path.join(ROOT, "web/proto/google/rpc/status.proto"),
  path.join(ROOT, "web/proto/google/rpc/error_details.proto"),
]);
const Status = rpc.lookupType("google.rpc.Status");
const ErrorInfo = rpc.lookupType("google.rpc.ErrorInfo");

function errorReason(err) {
  const [bytes] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (!bytes) return "";
  const status = Status.decode(bytes);
  const info = status.details.find((d) => d.type_url === "type.googleapis.com/google.rpc.ErrorInfo");
  return info ? ErrorInfo.decode(info.value).reason : "";
}

const credentials = channelCredentials();
// The local operator's secret goes to a local server only.
const tokenFile = args["token-file"] ?? (isLoopback(target) ? "tokend-data/operator.token" : undefined);
if (!tokenFile) usage(`${args.server} is not on this machine: give its operator secret with --token-file`);
const secret = readFileSync(tokenFile, "utf8").trim();
const auth = new grpc.Metadata();
auth.set("authorization", `Bearer ${secret}`);
const tokens = new v1.TokenService(target, credentials);
const accounts = new v1.AccountService(target, credentials);

/** A unary call as a promise, with the credential and the deadline every
 * call needs. */
const call = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, auth, { deadline: Date.now() + timeoutMs }, (err, response) =>
      err ? reject(err) : resolve(response),
    ),
  );

/** The next events of a stream, one at a time (PROGRESS skipped). */
function events(stream) {
  const queue = [];
  const waiting = [];
  stream.on("data", (e) => (waiting.length ? waiting.shift()(e) : queue.push(e)));
  stream.on("error", () => {}); // cancelled at the end
  return async function next() {
    for (;;) {
      const e = queue.length
        ? queue.shift()
        : await new Promise((resolve, reject) => {
            waiting.push(resolve);
            setTimeout(() => reject(new Error("no event within 10 s")), 10_000).unref();
          });
      if (e.type !== "EVENT_TYPE_PROGRESS") return e;
    }
  };
}

const account = await call(accounts, "CreateAccount", {
  name: "Node Inc.",
  type: "ACCOUNT_TYPE_CLIENT",
  modules: ["access-management", "commerce"],
}).catch((err) => {
  const why = errorReason(err);
  if (why === "PERMISSION_DENIED" || why === "UNAUTHENTICATED") {
    console.error(`this example creates an account: give it an operator's secret (--token-file): ${err.details}`);
    process.exit(2);
  }
  throw err;
});
const created = await call(tokens, "CreateToken", { account_id: account.id, name: "node-client", modules: ["commerce"] });
const token = created.token;
console.log(`created ${token.id} in ${account.id}`);
assert.equal((await call(tokens, "VerifyToken", { secret: created.secret })).valid, true);

// Watch the account from a snapshot: one SNAPSHOT per live token, SYNCED.
// A stream runs as long as it is read: no deadline.
const stream = tokens.WatchTokens({ account_id: account.id, send_initial: true }, auth);
const next = events(stream);
let e;
do e = await next(); while (e.type !== "EVENT_TYPE_SYNCED");
console.log(`watching from revision ${e.revision}`);

const deleted = await call(tokens, "DeleteToken", { id: token.id, etag: token.etag });
console.log(`API token '${deleted.token.name}' (${deleted.token.id}) was deleted at revision ${deleted.revision}`);
e = await next();
assert.equal(e.type, "EVENT_TYPE_DELETED");
assert.equal(e.token.id, token.id);
assert.equal(e.revision, deleted.revision);
console.log(`watcher saw DELETED ${e.token.id} at revision ${e.revision}`);
stream.cancel();

// A client that lost its stream resumes from the revision after the last
// one it saw; here from the deletion itself, which is replayed.
const resumed = tokens.WatchTokens({ account_id: account.id, start_revision: deleted.revision }, auth);
e = await events(resumed)();
assert.equal(e.type, "EVENT_TYPE_DELETED");
assert.equal(e.revision, deleted.revision);
console.log(`resumed from revision ${deleted.revision}: DELETED ${e.token.id} again`);
resumed.cancel();

const result = await call(tokens, "VerifyToken", { secret: created.secret });
assert.equal(result.valid, false);
assert.equal(result.result, "VERIFY_RESULT_NOT_FOUND");

// Errors: the code, and the reason to branch on.
try {
  await call(tokens, "DeleteToken", { id: token.id });
  assert.fail("a deleted token was deleted again");
} catch (err) {
  assert.equal(err.code, grpc.status.NOT_FOUND);
  assert.equal(errorReason(err), "TOKEN_NOT_FOUND");
  console.log(`deleting it again: NOT_FOUND, reason ${errorReason(err)}`);
}
tokens.close();
accounts.close();
console.log("OK");
