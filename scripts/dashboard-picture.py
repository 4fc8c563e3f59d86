#!/usr/bin/env python3
"""Renders deploy/grafana/tokend-dashboard.json from a real run, for the
README, where Grafana itself cannot run: the same panels and the same
PromQL, answered by a real Prometheus (Debian's) scraping a real tokend
under load, plotted with matplotlib.

    scripts/dashboard-picture.py [--tokend target/release/tokend] [--seconds 120]
                                 [--out docs/img/dashboard.png]

Load: 4 clients each create a token, verify it, ask ext_authz about it
(allowed) and about a made-up secret (denied), then delete it; a watcher
follows every change. Needs prometheus (apt), grpcio-tools and matplotlib
(pip).
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer")


def stubs(out):
    """grpcio stubs for tokend's services and Envoy's ext_authz (proto/vendor)."""
    from grpc_tools import protoc
    out.mkdir(parents=True, exist_ok=True)
    well_known = str(pathlib.Path(protoc.__file__).parent / "_proto")
    files = ["apitokens/v1/common.proto", "apitokens/v1/accounts.proto", "apitokens/v1/tokens.proto"]
    vendor = [str(p.relative_to(ROOT / "proto" / "vendor"))
              for p in (ROOT / "proto" / "vendor").rglob("*.proto")]
    for includes, protos in (([ROOT / "proto"], files), ([ROOT / "proto" / "vendor"], vendor)):
        args = ["protoc", *[f"-I{i}" for i in includes], f"-I{well_known}",
                f"--python_out={out}", f"--grpc_python_out={out}", *protos]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
    sys.path.insert(0, str(out))
    import importlib
    return {name: importlib.import_module(name) for name in (
        "apitokens.v1.tokens_pb2", "apitokens.v1.tokens_pb2_grpc",
        "apitokens.v1.accounts_pb2", "apitokens.v1.accounts_pb2_grpc",
        "envoy.service.auth.v3.external_auth_pb2", "envoy.service.auth.v3.external_auth_pb2_grpc",
        "envoy.service.auth.v3.attribute_context_pb2")}


def load(m, target, secret, until):
    import grpc
    auth = [("authorization", f"Bearer {secret}")]
    ch = grpc.insecure_channel(target)
    tokens = m["apitokens.v1.tokens_pb2_grpc"].TokenServiceStub(ch)
    accounts = m["apitokens.v1.accounts_pb2_grpc"].AccountServiceStub(ch)
    authz = m["envoy.service.auth.v3.external_auth_pb2_grpc"].AuthorizationStub(ch)
    tpb, apb = m["apitokens.v1.tokens_pb2"], m["apitokens.v1.accounts_pb2"]
    ext, ctx = m["envoy.service.auth.v3.external_auth_pb2"], m["envoy.service.auth.v3.attribute_context_pb2"]
    acc = accounts.CreateAccount(apb.CreateAccountRequest(
        name="Load", type=apb.ACCOUNT_TYPE_CLIENT, modules=["access-management", "commerce"]), metadata=auth)

    def check(secret):
        http = ctx.AttributeContext.HttpRequest(method="GET", path="/v1/orders",
                                                headers={"authorization": f"Bearer {secret}"})
        req = ext.CheckRequest(attributes=ctx.AttributeContext(request=ctx.AttributeContext.Request(http=http)))
        authz.Check(req)

    def worker(n):
        i = 0
        while time.time() < until:
            r = tokens.CreateToken(tpb.CreateTokenRequest(
                account_id=acc.id, name=f"load {n} {i}", modules=["commerce"]), metadata=auth)
            for _ in range(5):
                tokens.VerifyToken(tpb.VerifyTokenRequest(secret=r.secret), metadata=auth)
                check(r.secret)
            check("idt:TKN-0000-0000:" + "x" * 46)
            tokens.DeleteToken(tpb.DeleteTokenRequest(id=r.token.id), metadata=auth)
            i += 1
            time.sleep(0.02)

    def watcher():
        try:
            for _ in tokens.WatchTokens(tpb.WatchTokensRequest(), metadata=auth, timeout=until - time.time()):
                pass
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=watcher, daemon=True))
    for t in threads:
        t.start()
    for t in threads[:-1]:
        t.join()


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body["status"] != "success":
        sys.exit(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def plot(dashboard, prom, start, end, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = dashboard["panels"]
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(18, 3.4 * rows))
    scale = {"percentunit": (100, "%"), "s": (1000, "ms"), "bytes": (1 / 1024, "KiB")}
    for ax, panel in zip(axes.flat, panels):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        factor, label = scale.get(unit, (1, {"reqps": "per second", "ops": "per second"}.get(unit, "")))
        for t in panel["targets"]:
            expr = t["expr"].replace("$__rate_interval", "10s").replace('instance=~"$instance"', 'instance=~".*"')
            for series in query_range(prom, expr, start, end, 2):
                xs = [float(v[0]) - start for v in series["values"]]
                ys = [float(v[1]) * factor for v in series["values"]]
                ax.plot(xs, ys, linewidth=1, label=legend(t["legendFormat"], series["metric"])[:48])
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no series: none happened", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="gray")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{dashboard['title']}: deploy/grafana/tokend-dashboard.json over a {int(end - start)} s run "
                 "(seconds since start)", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokend", default=str(ROOT / "target" / "release" / "tokend"))
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "dashboard.png"))
    args = parser.parse_args()
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "tokend-dashboard.json").read_text())
    work = pathlib.Path(tempfile.mkdtemp(prefix="tokend-dashboard-"))
    api, metrics, prom_port = free_port(), free_port(), free_port()
    tokend = subprocess.Popen([args.tokend, "serve", "--listen", f"127.0.0.1:{api}",
                               "--data-dir", str(work / "data"), "--metrics-addr", f"127.0.0.1:{metrics}"],
                              stderr=subprocess.DEVNULL)
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{ROOT / 'deploy' / 'prometheus' / 'tokend-rules.yaml'}]\n"
        "scrape_configs:\n"
        f"  - job_name: tokend\n    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{metrics}/metrics")
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
        m = stubs(work / "stubs")
        secret = (work / "data" / "operator.token").read_text().strip()
        start = time.time()
        load(m, f"127.0.0.1:{api}", secret, start + args.seconds)
        time.sleep(3)
        plot(dashboard, f"http://127.0.0.1:{prom_port}", start, time.time(), args.out)
    finally:
        for p in (tokend, prom):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
