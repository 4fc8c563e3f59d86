#!/usr/bin/env python3
"""The crate's module graph: for each top-level module of src/, the modules
its code names as `crate::X` (comments and test modules left out), then the
cycles among them. Exits 1 when there is a cycle (CI runs it).

    scripts/module-deps.py [src]
"""
import itertools
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
# Files of modules declared `#[cfg(test)] mod x;`: test code may use anything.
test_only = set()
for p in root.rglob("*.rs"):
    for name in re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))? )?mod ([a-z_]+);", p.read_text()):
        base = p.parent if p.name == "mod.rs" else p.with_suffix("")
        test_only.update({base / f"{name}.rs", base / name / "mod.rs"})
mods = {}
for p in root.rglob("*.rs"):
    rel = p.relative_to(root)
    if rel.parts[0] == "bin" or rel.name in ("main.rs", "lib.rs") or p in test_only:
        continue
    top = rel.parts[0].removesuffix(".rs")
    text = p.read_text()
    # Drop test modules: they may depend on anything.
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    # Doc links are not dependencies: drop comments.
    text = re.sub(r"//[^\n]*", "", text)
    deps = set(re.findall(r"crate::([a-z_]+)", text))
    deps.discard(top)
    mods.setdefault(top, set()).update(deps)
known = set(mods)
edges = {m: sorted(d & known) for m, d in sorted(mods.items())}
for m, d in edges.items():
    print(f"{m} -> {', '.join(d)}")
# strongly connected components (Tarjan)
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, []):
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for v in edges:
    if v not in index: strong(v)
print("cycles (strongly connected groups):", sccs if sccs else "none")
for a, b in itertools.combinations(sorted(edges), 2):
    if b in edges[a] and a in edges[b]:
        print(f"  two-way: {a} <-> {b}")
sys.exit(1 if sccs else 0)
