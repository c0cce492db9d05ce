"""How long ``--help``, ``models list`` and usage errors take, and whether they start TensorFlow.

Each command runs ``--repeats`` times as a fresh ``python -m kerascls.X`` process (the model
catalog is written first, as any earlier command would have); the table gives the median wall
time, the largest import ``python -X importtime`` reports, and the lines on stderr beyond the
command's own. Run from the repository root:

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --repeats 5 --with-tensorflow   # also `python -c "import tensorflow"`
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = (
    ("kerascls.train", "--help"),
    ("kerascls.evaluate", "--help"),
    ("kerascls.export", "--help"),
    ("kerascls.models", "list"),
    ("kerascls.train", "--modle", "lenet"),
    ("kerascls.train", "--model", "lennet"),
    ("kerascls.train", "--formats", "tflite-int9"),
)


def run(args, env, importtime=False):
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    return time.perf_counter() - t0, proc


def heaviest_import(stderr: str) -> tuple[str, float]:
    best = ("", 0.0)
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if name.startswith("   ") or not cumulative.strip().isdigit():
                continue  # only top-level imports, not the header
            us = float(cumulative.strip())
            if us > best[1]:
                best = (name.strip(), us)
    return best[0], best[1] / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--with-tensorflow", action="store_true",
                   help="also time a bare `import tensorflow` for comparison")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    env["KERASCLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="kerascls-cache-")
    run(["-m", "kerascls.models", "list"], env)  # write the catalog
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}, {os.cpu_count()} CPUs, {args.repeats} runs each")
    print(f"{'command':48s} {'median s':>9s}  {'tensorflow?':>11s}  heaviest import")
    rows = [("-m", *c) for c in COMMANDS]
    if args.with_tensorflow:
        rows.append(("-c", "import tensorflow"))
    for cmd in rows:
        times = [run(list(cmd), env)[0] for _ in range(args.repeats)]
        _, proc = run(list(cmd), env, importtime=True)
        tf = "yes" if any(ln.rstrip().endswith("| tensorflow") for ln in
                          proc.stderr.splitlines()) else "no"
        name, seconds = heaviest_import(proc.stderr)
        label = " ".join(cmd[1:]) if cmd[0] == "-m" else " ".join(cmd)
        print(f"{label:48s} {statistics.median(times):9.2f}  {tf:>11s}  {name} "
              f"{seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
