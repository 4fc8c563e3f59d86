#!/usr/bin/env python3
"""A Python grpcio client for tokend: create a token, watch, delete it, and
see the deletion arrive on the stream.

Stubs are generated from the repository's proto/ at start-up with
grpcio-tools, into a temporary directory, so nothing generated is committed:

    pip install grpcio grpcio-tools
    python3 examples/python/tokend_demo.py --server localhost:50051 \
        --token-file tokend-data/operator.token

It creates an account ("Python Inc.", left behind: accounts are not
deleted), so it needs an operator's secret, such as the one above. Like the
`tokend` CLI, it reads ./tokend-data/operator.token by itself for a server
on this machine only, and calls a server started with --tls-cert as
https://host:port (--ca-file, else grpcio's own bundled roots; --client-cert
and --client-key when it asks for client certificates). Each call has a
deadline (--timeout, 30 s): a server that never answers fails the call, as
it would fail any gRPC client without one, rather than hang. A failed call
ends the example with its status code and message.
"""

import argparse
import atexit
import importlib
import ipaddress
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


LOCAL_OPERATOR_TOKEN = "tokend-data/operator.token"


def is_loopback(target):
    """Whether host:port names this machine (the CLI's rule)."""
    host = target.rsplit(":", 1)[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_for(parser, args):
    """A channel to --server: plaintext for host:port or http://, TLS for
    https:// (with --ca-file's roots, or grpcio's bundled ones, and a client
    certificate when given)."""
    scheme, sep, rest = args.server.partition("://")
    tls = sep != "" and scheme.lower() == "https"
    target = (rest if sep else args.server).rstrip("/")
    if not tls:
        if args.ca_file or args.client_cert or args.client_key:
            parser.error(f"--ca-file, --client-cert and --client-key apply to an https:// server; "
                         f"{args.server} is plaintext")
        return target, grpc.insecure_channel(target)
    if bool(args.client_cert) != bool(args.client_key):
        parser.error("--client-cert and --client-key go together")

    def read(flag, path, label):
        """A PEM file's bytes, checked as the CLI does (grpcio's own error
        for a wrong file says nothing of which)."""
        if not path:
            return None
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError as e:
            parser.error(f"{flag}: {e}")
        if f"{label}-----".encode() not in data:
            parser.error(f"{flag}: {path} holds no PEM {label.lower()}")
        return data

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("--ca-file", args.ca_file, "CERTIFICATE"),
        private_key=read("--client-key", args.client_key, "PRIVATE KEY"),
        certificate_chain=read("--client-cert", args.client_cert, "CERTIFICATE"))
    return target, grpc.secure_channel(target, credentials)


def seconds(text):
    """--timeout: seconds, as `10` or the CLI's `10s`."""
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above zero, such as 10s")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The same flags and environment as the `tokend` CLI's; the server as
    # host:port or as the CLI's URL.
    env = os.environ.get
    parser.add_argument("--server", default=env("TOKEND_SERVER", "localhost:50051"))
    parser.add_argument("--token-file", default=env("TOKEND_TOKEN_FILE"))
    parser.add_argument("--ca-file", default=env("TOKEND_CA_FILE"))
    parser.add_argument("--client-cert", default=env("TOKEND_CLIENT_CERT"))
    parser.add_argument("--client-key", default=env("TOKEND_CLIENT_KEY"))
    parser.add_argument("--timeout", type=seconds, default=env("TOKEND_TIMEOUT", "30s"),
                        help="each call's deadline, in seconds (30s)")
    args = parser.parse_args()

    target, channel = channel_for(parser, args)
    # The local operator's secret goes to a local server only.
    token_file = args.token_file or (LOCAL_OPERATOR_TOKEN if is_loopback(target) else None)
    if token_file is None:
        parser.error(f"{args.server} is not on this machine: give its operator secret with --token-file")
    secret = pathlib.Path(token_file).read_text().strip()
    auth = [("authorization", f"Bearer {secret}")]
    tokens_pb2, tokens_grpc, accounts_pb2, accounts_grpc = generate_stubs()
    tokens = tokens_grpc.TokenServiceStub(channel)
    accounts = accounts_grpc.AccountServiceStub(channel)

    def call(method, request):
        """A unary call, with the credential and the deadline every call needs."""
        return method(request, metadata=auth, timeout=args.timeout)

    try:
        account = call(accounts.CreateAccount, accounts_pb2.CreateAccountRequest(
            name="Python Inc.", type=accounts_pb2.ACCOUNT_TYPE_CLIENT,
            modules=["access-management", "commerce"]))
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            sys.exit(f"this example creates an account: give it an operator's secret "
                     f"(--token-file): {e.details()}")
        raise
    created = call(tokens.CreateToken, tokens_pb2.CreateTokenRequest(
        account_id=account.id, name="python-client", modules=["commerce"]))
    token = created.token
    print(f"created {token.id} in {account.id}")
    assert call(tokens.VerifyToken, tokens_pb2.VerifyTokenRequest(secret=created.secret)).valid

    # Watch the account from a snapshot; events arrive on a background
    # thread. A stream runs as long as it is read: no deadline.
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

    deleted = call(tokens.DeleteToken, tokens_pb2.DeleteTokenRequest(id=token.id, etag=token.etag))
    print(f"API token '{deleted.token.name}' ({deleted.token.id}) was deleted "
          f"at revision {deleted.revision}")

    e = events.get(timeout=10)
    assert e.type == tokens_pb2.EVENT_TYPE_DELETED, e
    assert e.token.id == token.id and e.revision == deleted.revision, e
    print(f"watcher saw DELETED {e.token.id} at revision {e.revision}")

    result = call(tokens.VerifyToken, tokens_pb2.VerifyTokenRequest(secret=created.secret))
    assert not result.valid and result.result == tokens_pb2.VERIFY_RESULT_NOT_FOUND
    try:
        call(tokens.GetToken, tokens_pb2.GetTokenRequest(id=token.id))
        sys.exit("a deleted token was still found")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
    stream.cancel()
    print("OK")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        hint = " (no answer within --timeout)" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else ""
        sys.exit(f"tokend_demo: {e.code().name}: {e.details()}{hint}")
