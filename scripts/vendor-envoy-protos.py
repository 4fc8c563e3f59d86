#!/usr/bin/env python3
"""Copies Envoy's ext_authz protos, and everything they import, into
proto/vendor/ from the envoy-types crate cargo already downloaded (its
package ships them). build.rs compiles them into the descriptor set that
server reflection serves for envoy.service.auth.v3.Authorization, so that
`grpcurl describe` works without Envoy's protos. The Rust types themselves
come from envoy-types, not from these files.

    scripts/vendor-envoy-protos.py        # after changing envoy-types' version

The google/protobuf well-known types are built into protox: not copied.
"""
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "proto", "vendor")
START = "envoy/service/auth/v3/external_auth.proto"


def envoy_types_dir():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--offline"], cwd=ROOT))
    for p in meta["packages"]:
        if p["name"] == "envoy-types":
            return os.path.join(os.path.dirname(p["manifest_path"]), "proto"), p["version"]
    sys.exit("envoy-types is not a dependency")


def main():
    src, version = envoy_types_dir()
    roots = [os.path.join(src, d) for d in sorted(os.listdir(src))]
    found, stack = {}, [START]
    while stack:
        name = stack.pop()
        if name in found or name.startswith("google/protobuf/"):
            continue
        path = next((os.path.join(r, name) for r in roots if os.path.exists(os.path.join(r, name))), None)
        if path is None:
            sys.exit(f"{name}: not found under {src}")
        found[name] = path
        text = open(path, encoding="utf-8").read()
        stack += re.findall(r'^import\s+(?:public\s+)?"([^"]+)";', text, re.M)
    shutil.rmtree(OUT, ignore_errors=True)
    for name, path in sorted(found.items()):
        os.makedirs(os.path.dirname(os.path.join(OUT, name)), exist_ok=True)
        shutil.copyfile(path, os.path.join(OUT, name))
    with open(os.path.join(OUT, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            "# Vendored protos (do not edit)\n\n"
            f"Envoy's `{START}` and its imports, {len(found)} files, copied from the\n"
            f"envoy-types {version} crate by `scripts/vendor-envoy-protos.py`. They come from\n"
            "envoyproxy/data-plane-api, cncf/xds, bufbuild/protoc-gen-validate and\n"
            "googleapis, all Apache-2.0. build.rs compiles them only into the descriptor\n"
            "set that reflection serves; `buf lint` skips this directory.\n"
        )
    print(f"{len(found)} files from envoy-types {version} into {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
