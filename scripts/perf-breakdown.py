#!/usr/bin/env python3
"""Where a delete's CPU goes: reads `perf script` output of tokend (or of
the floor server) during a delete run (scripts/profile.sh) and sorts every
sample into one part of the delete's path, first match in the order below,
looking at the whole stack. Prints a Markdown table: share of the server's
samples and microseconds per delete (share x the run's measured server CPU
per delete)."""

import re
import sys
from collections import Counter

# (part, patterns): a sample belongs to the first part any frame matches.
PARTS = [
    # The floor server's log is its `append`: one write and fdatasync.
    ("log append + fdatasync (writer)", [r"wal::Wal::append", r"floor::Log::append"]),
    ("sled checkpoint: flush + fdatasync", [r"apply::checkpoint"]),
    ("sled apply (inserts, splits, GC)", [r"layout::Writes::apply", r"^sled::"]),
    ("encoding records and events (JSON)", [r"record::encode", r"^serde_json::"]),
    ("planning + in-memory state", [r"command::plan", r"state::State", r"^imbl::", r"commit::(plan|record_change|record_access)\b"]),
    ("publishing events to watchers", [r"hub::Hub", r"tokend::watch::"]),
    ("authentication", [r"tokend::auth::", r"tokend::caller::"]),
    # Not the frames that only wrap other work in a span (an instrumented
    # future's poll, a closure run in scope): what runs inside belongs to
    # its own part.
    ("metrics + logs", [r"^metrics", r"^tracing(?!::instrument::Instrumented<T> as core::future::future::Future>::poll\b|::span::Span::in_scope\b)"]),
    ("thread hand-offs (sleep, wake)", [r"blocking_recv", r"commit::planner_loop", r"commit::Handoff::submit", r"durable::writer_loop", r"apply::apply_loop", r"floor::write_loop"]),
    ("gRPC + HTTP/2 (the floor's stack too)", [r"^h2::", r"^hyper", r"^tonic", r"^tower", r"^prost", r"^axum", r"^http::"]),
    ("tokio runtime + sockets", [r"^tokio::", r"^mio::"]),
]
COMPILED = [(name, [re.compile(p) for p in pats]) for name, pats in PARTS]
OTHER = "other (kernel, allocator, unattributed)"


def samples(lines):
    stack, header = [], None
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if header is not None:
                yield header, stack
            stack, header = [], None
        elif not line.startswith(("\t", " ")):
            header = line
        else:
            parts = line.strip().split(" ", 1)
            sym = parts[1] if len(parts) > 1 else ""
            sym = re.sub(r"\s+\(.*\)$", "", sym)
            # "<tokend::x::Y as Trait>::f" → "tokend::x::Y ..." for matching.
            stack.append(sym.lstrip("<"))
    if header is not None:
        yield header, stack


def part_of(stack):
    for name, pats in COMPILED:
        if any(p.search(f) for f in stack for p in pats):
            return name
    return OTHER


def main():
    cpu_us = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    counts = Counter(part_of(stack) for _, stack in samples(sys.stdin))
    total = sum(counts.values()) or 1
    print(f"| part of the path | share of the server's CPU | µs per delete |")
    print("|---|---|---|")
    for name in [n for n, _ in PARTS] + [OTHER]:
        share = counts.get(name, 0) / total
        print(f"| {name} | {share * 100:.1f}% | {share * cpu_us:.1f} |")
    print(f"| **all** ({total} samples) | 100% | **{cpu_us:.1f}** |")


if __name__ == "__main__":
    main()
