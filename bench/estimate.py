"""Sweep time estimates against real time: `python app.py sweep ... --estimate --json` and the same
sweep run for real, each as its own process (model load and start-up included in both), timed with
the wall clock. The goal is within 35%.

Run: python -m bench.estimate [--task passkey] [--lengths 500,1000,2000] [--depths 0,50,100]
Last line: estimate_over_real: X (the worst of the grids)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRIDS = [("passkey", "500,1000,2000", "0,50,100"), ("niah_single_1", "1000,2000", "0,25,50,75,100"),
         ("litm_kv", "1000", "0,50,100")]


def timed(args: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), *args, "--json"], capture_output=True, text=True,
                          check=True)
    return time.perf_counter() - started, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task")
    parser.add_argument("--lengths")
    parser.add_argument("--depths")
    args = parser.parse_args()
    grids = [(args.task, args.lengths, args.depths)] if args.task else GRIDS
    ratios = []
    for task, lengths, depths in grids:
        sweep = ["sweep", "--task", task, "--lengths", lengths, "--depths", depths]
        _, estimate = timed([*sweep, "--estimate"])
        real, _ = timed(sweep)
        ratios.append(estimate["estimated_seconds"] / real)
        print(f"{task} lengths {lengths} depths {depths}: estimated {estimate['estimated_seconds']} s "
              f"({estimate['new_tokens_per_cell']} new tokens per cell), real {real:.1f} s, "
              f"ratio {ratios[-1]:.2f}")
    print(f"estimate_over_real: {max(ratios, key=lambda r: abs(r - 1)):.2f}")


if __name__ == "__main__":
    main()
