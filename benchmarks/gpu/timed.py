"""Run one command and write its wall time, exit status and peak resident memory as JSON.

Usage: python benchmarks/gpu/timed.py OUT.json -- COMMAND [ARG ...]

The GPU image need not have GNU time, so the figures come from Python: wall time by
``time.perf_counter`` around the child, peak RSS from ``resource.getrusage`` of the
children (the largest child's maximum resident set, KiB on Linux). The child's output goes
to this process's stdout/stderr unchanged.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: timed.py OUT.json -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    out, cmd = argv[0], argv[2:]
    start = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(out, "w") as fh:
        json.dump({"command": cmd, "rc": rc, "wall_s": wall, "peak_rss_kib": peak_kib}, fh)
    print(f"{' '.join(cmd)}: rc {rc}, wall {wall:.2f} s, peak RSS {peak_kib / 1024:.0f} MiB")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
