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
// deleted), so it needs an operator's secret, such as the one above.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { parseArgs } from "node:util";
import assert from "node:assert/strict";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

// The same environment as the `tokend` CLI's; the server as host:port or as
// the CLI's URL.
const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: process.env.TOKEND_SERVER ?? "localhost:50051" },
    "token-file": { type: "string", default: process.env.TOKEND_TOKEN_FILE ?? "tokend-data/operator.token" },
  },
});
if (args.server.startsWith("https://")) {
  console.error("this example speaks plaintext gRPC: give http://host:port or host:port");
  process.exit(2);
}
args.server = args.server.replace(/^http:\/\//, "").replace(/\/$/, "");

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

const secret = readFileSync(args["token-file"], "utf8").trim();
const auth = new grpc.Metadata();
auth.set("authorization", `Bearer ${secret}`);
const credentials = grpc.credentials.createInsecure();
const tokens = new v1.TokenService(args.server, credentials);
const accounts = new v1.AccountService(args.server, credentials);

/** A unary call as a promise. */
const call = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, auth, (err, response) => (err ? reject(err) : resolve(response))),
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
