#!/usr/bin/env python3
"""A Python grpcio client for tokend: create a token, watch, delete it, and
see the deletion arrive on the stream.

Stubs are generated from the repository's proto/ at start-up with
grpcio-tools, into a temporary directory, so nothing generated is committed:

    pip install grpcio grpcio-tools
    python3 examples/python/tokend_demo.py --server localhost:50051 \
        --token-file tokend-data/operator.token

It creates an account ("Python Inc.", left behind: accounts are not
deleted), so it needs an operator's secret, such as the one above.
"""

import argparse
import atexit
import importlib
import os
import pathlib
import queue
import shutil
import sys
import tempfile
import threading

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTOS = ["apitokens/v1/common.proto", "apitokens/v1/accounts.proto", "apitokens/v1/tokens.proto"]


def generate_stubs():
    """Compiles proto/ into an importable package; returns (pb2, pb2_grpc)."""
    out = tempfile.mkdtemp(prefix="tokend-py-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = str(pathlib.Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}",
            f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return (importlib.import_module("apitokens.v1.tokens_pb2"),
            importlib.import_module("apitokens.v1.tokens_pb2_grpc"),
            importlib.import_module("apitokens.v1.accounts_pb2"),
            importlib.import_module("apitokens.v1.accounts_pb2_grpc"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The same environment as the `tokend` CLI's; the server as host:port or
    # as the CLI's URL.
    parser.add_argument("--server", default=os.environ.get("TOKEND_SERVER", "localhost:50051"))
    parser.add_argument("--token-file",
                        default=os.environ.get("TOKEND_TOKEN_FILE", "tokend-data/operator.token"))
    args = parser.parse_args()
    if args.server.startswith("https://"):
        parser.error("this example speaks plaintext gRPC: give http://host:port or host:port")
    args.server = args.server.removeprefix("http://").rstrip("/")

    tokens_pb2, tokens_grpc, accounts_pb2, accounts_grpc = generate_stubs()
    secret = pathlib.Path(args.token_file).read_text().strip()
    auth = [("authorization", f"Bearer {secret}")]
    channel = grpc.insecure_channel(args.server)
    tokens = tokens_grpc.TokenServiceStub(channel)
    accounts = accounts_grpc.AccountServiceStub(channel)

    try:
        account = accounts.CreateAccount(accounts_pb2.CreateAccountRequest(
            name="Python Inc.", type=accounts_pb2.ACCOUNT_TYPE_CLIENT,
            modules=["access-management", "commerce"]), metadata=auth)
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            sys.exit(f"this example creates an account: give it an operator's secret "
                     f"(--token-file): {e.details()}")
        raise
    created = tokens.CreateToken(tokens_pb2.CreateTokenRequest(
        account_id=account.id, name="python-client", modules=["commerce"]), metadata=auth)
    token = created.token
    print(f"created {token.id} in {account.id}")
    assert tokens.VerifyToken(tokens_pb2.VerifyTokenRequest(secret=created.secret),
                              metadata=auth).valid

    # Watch the account from a snapshot; events arrive on a background thread.
    events = queue.Queue()
    stream = tokens.WatchTokens(tokens_pb2.WatchTokensRequest(
        account_id=account.id, send_initial=True), metadata=auth)

    def pump():
        try:
            for event in stream:
                events.put(event)
        except grpc.RpcError as e:  # cancelled at the end
            events.put(e)

    threading.Thread(target=pump, daemon=True).start()
    synced = None
    while synced is None:
        e = events.get(timeout=10)
        if e.type == tokens_pb2.EVENT_TYPE_SYNCED:
            synced = e.revision
    print(f"watching from revision {synced}")

    deleted = tokens.DeleteToken(tokens_pb2.DeleteTokenRequest(
        id=token.id, etag=token.etag), metadata=auth)
    print(f"API token '{deleted.token.name}' ({deleted.token.id}) was deleted "
          f"at revision {deleted.revision}")

    e = events.get(timeout=10)
    assert e.type == tokens_pb2.EVENT_TYPE_DELETED, e
    assert e.token.id == token.id and e.revision == deleted.revision, e
    print(f"watcher saw DELETED {e.token.id} at revision {e.revision}")

    result = tokens.VerifyToken(tokens_pb2.VerifyTokenRequest(secret=created.secret),
                                metadata=auth)
    assert not result.valid and result.result == tokens_pb2.VERIFY_RESULT_NOT_FOUND
    try:
        tokens.GetToken(tokens_pb2.GetTokenRequest(id=token.id), metadata=auth)
        sys.exit("a deleted token was still found")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
    stream.cancel()
    print("OK")


if __name__ == "__main__":
    main()
