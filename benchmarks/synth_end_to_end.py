"""`uniedit synth` with its defaults (the built-in scene world, 1,000 rows) end to end.

Target (issue 3): under 60 s on a 2-core machine. Runs the real command in a fresh process
(imports included) into a temporary folder, with --num-proc 1 and with all cores, and prints
wall time and rows/s for each.

    python benchmarks/synth_end_to_end.py [--rows 1000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{'num-proc':>8} {'run':>4} {'seconds':>8} {'rows':>6} {'rows/s':>8}")
    worst = 0.0
    for num_proc in sorted({1, cores}):
        for run in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "data"
                argv = [sys.executable, "-m", "uniedit_cli", "synth", "--out", str(out), "--num-proc", str(num_proc)]
                if args.rows != 1000:
                    argv += ["--num-rows", str(args.rows)]
                start = time.perf_counter()
                subprocess.run(argv, check=True, capture_output=True)
                seconds = time.perf_counter() - start
                rows = json.loads((out / "uniedit-data.json").read_text())["rows"]
            worst = max(worst, seconds)
            print(f"{num_proc:>8} {run:>4} {seconds:>8.2f} {rows:>6} {rows / seconds:>8.1f}")
    print(f"worst {worst:.2f} s against a target of {TARGET_S:.0f} s: {'OK' if worst < TARGET_S else 'OVER TARGET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
