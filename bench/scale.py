"""Sweeps on Ray against the same sweep in this process: cells per second with 1 and 2 workers, Ray's
overhead per cell (against a 1K-token cell's own time), and, from the costs measured here, how a large
grid would spread over 8 workers (the driver's own dispatch, simulated).

Workers are started and warmed up (model loaded, one cell run) before timing, as they are kept between
sweeps. Each measured sweep is a fresh one with the same grid.

Run: python -m bench.scale [--length 1000] [--depths 8] [--seeds 2]
"""
from __future__ import annotations

import argparse
import heapq
import time

from engines.config.specs import RunConfig
from engines.model.loading import MANAGER
from engines.probes.tasks import get_task
from engines.studies.sweeps import SweepSpec, calibrate, depth_grid
from services.cluster import RayWorkers, groups
from services.sweep_jobs import estimate, local_results, open_job, run_job


def timed(spec: SweepSpec, config: RunConfig, workers: RayWorkers | None) -> tuple[float, list[dict]]:
    """The faster of two runs of the sweep (the machine is shared), and its rows."""
    best = None
    for _ in range(2):
        job = open_job(None, "", config, spec)
        started = time.perf_counter()
        rows = list(run_job(job, None, workers=workers))
        seconds = time.perf_counter() - started
        best = min(best or (seconds, rows), (seconds, rows), key=lambda run: run[0])
    return best


def echo(items):
    """A Ray generator task that hands back what it is given: the driver's cost per cell without the cell."""
    for item in items:  # noqa: UP028 (Ray sends into the generator; a list iterator takes no send)
        yield item


def round_trip(spec: SweepSpec, config: RunConfig) -> float:
    """Seconds per cell for a finished cell's result to travel through Ray to the driver (timed from the
    first result on, so that starting the task's process is not counted)."""
    import ray

    results = list(local_results(open_job(None, "", config, spec)))
    stream = iter(ray.remote(num_cpus=0)(echo).remote(results))  # beside the workers holding every core
    ray.get(next(stream))
    started = time.perf_counter()
    for ref in stream:
        ray.get(ref)
    return (time.perf_counter() - started) / (len(results) - 1)


def simulated_makespan(spec: SweepSpec, workers: int, cell_seconds) -> float:
    """Seconds for `workers` to run the grid as the driver hands out its groups (costliest first to
    the first idle worker); `cell_seconds(cell, previous)` is one cell's cost after `previous` in its group."""
    free = [0.0] * workers
    by_key = {cell.key: cell for cell in spec.cells()}
    for keys in groups(spec, set(), workers):
        cost, previous = 0.0, None
        for key in keys:
            cost += cell_seconds(by_key[key], previous)
            previous = by_key[key]
        heapq.heappush(free, heapq.heappop(free) + cost)
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--depths", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    task = get_task("passkey")
    config = RunConfig(max_new_tokens=task.max_new_tokens)
    spec = SweepSpec("passkey", (args.length,), depth_grid(args.depths), tuple(range(1, args.seeds + 1)))
    cells = len(spec.cells())
    MANAGER.get(config.model)
    local_seconds, local_rows = timed(spec, config, None)
    cell_seconds = sum(r["seconds"] for r in local_rows) / cells
    print(f"{cells} passkey cells of {args.length} tokens; in this process: {local_seconds:.1f} s "
          f"({cells / local_seconds:.2f} cells/s), a cell's generation {cell_seconds:.2f} s")

    rates = {}
    for count in (1, 2):
        workers = RayWorkers(count)
        workers.top_up(config.model.device)
        list(run_job(open_job(None, "", config, SweepSpec("passkey", (args.length,), (25.0, 75.0))), None,
                     workers=workers))  # a cell on each worker: each loads its model and warms up
        seconds, rows = timed(spec, config, workers)
        same = {r["key"]: r["answer"] for r in rows} == {r["key"]: r["answer"] for r in local_rows}
        rates[count] = cells / seconds
        print(f"ray, {count} worker(s): {seconds:.1f} s ({rates[count]:.2f} cells/s); answers as in-process: {same}")
        if count == 1:
            overhead = round_trip(spec, config)
            print(f"ray overhead per cell: {overhead * 1000:.1f} ms for a result's trip to the driver = "
                  f"{overhead / cell_seconds:.2%} of a {args.length}-token cell's own time (target: under 5%); "
                  f"the whole sweep took {seconds / local_seconds - 1:+.1%} against in-process")
        workers.close()
    print(f"2 workers against 1: {rates[2] / rates[1]:.2f}x cells/s (one machine: {MANAGER.loaded.device}, "
          "the cores split between them)")

    speed = calibrate(MANAGER.loaded, config)
    new_tokens = estimate(open_job(None, "", config, spec))["new_tokens_per_cell"]  # decode steps a cell takes
    large = SweepSpec("passkey", (1000, 2000, 4000, 8000), depth_grid(10), tuple(range(1, 6)))
    ray_cost = max(overhead, 0.0)

    def cost(cell, previous) -> float:
        start = int(previous.depth / 100 * previous.length) if previous else 0  # prefix shared up to the last needle
        return speed.prefill(start, cell.length) + speed.decode * new_tokens + ray_cost

    one = simulated_makespan(large, 1, cost)
    eight = simulated_makespan(large, 8, cost)
    print(f"simulated: {len(large.cells())} cells (lengths {large.lengths}, 10 depths, 5 seeds) at this machine's "
          f"measured costs: 1 worker {one / 60:.1f} min, 8 workers {eight / 60:.1f} min, "
          f"{one / eight:.2f}x of an ideal 8x")


if __name__ == "__main__":
    main()
