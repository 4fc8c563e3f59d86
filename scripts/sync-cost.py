#!/usr/bin/env python3
"""What one write-and-fdatasync costs on this disk, by record size.

    scripts/sync-cost.py [DIR]    (default: target/, on the disk a data dir
                                   under the checkout would use)

Appends records of each size, one `pwrite` and one `fdatasync` each, to a
file allocated ahead with `fallocate` (as tokend's write-ahead log segments
are, `src/store/sled/wal.rs`), and prints the median and mean time per sync.
On ext4 the first write to a block of the allocated space must also record
that the block now holds data (an extent no longer "unwritten"), so a
record that reaches into a new 4 KiB block costs a journal commit more: the
time per sync follows the blocks a batch touches, not its bytes. This is why
the log compresses its records (a batch of 4 deletions: about 2,500 bytes
as written before, 620 compressed).
"""
import os
import statistics
import sys
import tempfile
import time

SIZES = [400, 620, 940, 2480, 5570]
SYNCS = 3000


def per_sync(directory, size):
    fd, path = tempfile.mkstemp(dir=directory, suffix=".wal")
    try:
        os.posix_fallocate(fd, 0, SYNCS * size + (1 << 20))
        os.fsync(fd)
        record, at, took = b"x" * size, 0, []
        for _ in range(SYNCS):
            started = time.perf_counter()
            os.pwrite(fd, record, at)
            os.fdatasync(fd)
            took.append(time.perf_counter() - started)
            at += size
        return statistics.median(took), statistics.fmean(took)
    finally:
        os.close(fd)
        os.remove(path)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    os.makedirs(directory, exist_ok=True)
    print("| bytes per sync | median µs | mean µs |")
    print("|---|---|---|")
    for size in SIZES:
        median, mean = per_sync(directory, size)
        print(f"| {size} | {median * 1e6:.0f} | {mean * 1e6:.0f} |")


if __name__ == "__main__":
    main()
