"""How long `uniedit --help` and each command's `--help` take (target: under 0.5 s each).

Runs each as a fresh process several times and prints the median and worst wall time, plus
whether any heavy module (torch, transformers, diffusers, accelerate) was imported.

    python benchmarks/help_time.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [[], ["models"], ["edit"], ["generate"], ["ask"], ["synth"], ["train"], ["eval"]]
HEAVY = ("torch", "transformers", "diffusers", "accelerate")
TARGET_S = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    probe = ("import sys, runpy; sys.argv = ['uniedit'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('uniedit_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    worst_overall = 0.0
    print(f"{'command':<28} {'median s':>9} {'worst s':>8}  heavy imports")
    for command in COMMANDS:
        argv = [sys.executable, "-m", "uniedit_cli", *command, "--help"]
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        heavy = subprocess.run([sys.executable, "-c", probe, *command, "--help"], capture_output=True, text=True)
        heavy_line = [line for line in heavy.stderr.splitlines() if line.startswith("HEAVY=")]
        label = "uniedit " + " ".join(command + ["--help"])
        worst_overall = max(worst_overall, max(times))
        print(f"{label:<28} {statistics.median(times):>9.3f} {max(times):>8.3f}  {(heavy_line[0][6:] or 'none') if heavy_line else '?'}")
    verdict = "OK" if worst_overall < TARGET_S else "OVER TARGET"
    print(f"worst {worst_overall:.3f} s against a target of {TARGET_S} s: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
