"""Sweeps on Ray: the cells go, in groups that share a haystack, to actors that each hold a loaded model.

The driver (the CLI or the lab's server) loads no model. It splits the cells still to run into groups
of one seed and one length in needle order (the cells whose prompts share prefixes), hands a group to
each idle worker and gets every cell back as it finishes. The driver, not the workers, writes the run
log: one writer keeps the unique (sweep, cell) check in one place, works with SQLite on one machine as
with PostgreSQL for a cluster, and a killed worker can leave no half-written row. A dead worker's
unreceived cells go back in the queue for the others. Ray is optional: nothing here imports it until
a cluster is asked for.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from engines.config.errors import LabError
from engines.studies.sweeps import CellResult, SweepSpec

log = logging.getLogger("context_lab")
ROOT = Path(__file__).resolve().parents[1]
CPU_WORKERS = 2  # actors on a machine without GPUs when --workers is not given


class ClusterError(LabError, RuntimeError):
    """Ray is missing, cannot be reached, or has no worker left."""


def cluster_offered() -> bool:
    """Whether the operator set up a cluster for the UI: RAY_ADDRESS, or CONTEXT_LAB_RAY_WORKERS for a
    local one."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("CONTEXT_LAB_RAY_WORKERS"))


def groups(spec: SweepSpec, done: set[str], workers: int) -> list[list[str]]:
    """The keys of the cells still to run, one list per (seed, length) in depth order, split in halves
    until every worker has one; the costliest (longest) first."""
    by_haystack: dict[tuple[int, int], list] = {}
    for cell in spec.cells():
        if cell.key not in done:
            by_haystack.setdefault((cell.seed, cell.length), []).append(cell)
    parts = [sorted(cells, key=lambda c: c.depth) for cells in by_haystack.values()]
    while parts and len(parts) < workers and max(map(len, parts)) > 1:
        largest = max(parts, key=len)
        parts.remove(largest)
        parts += [largest[:len(largest) // 2], largest[len(largest) // 2:]]
    parts.sort(key=lambda cells: -sum(c.length for c in cells))
    return [[c.key for c in cells] for cells in parts]


class SweepWorker:
    """A Ray actor: one process with its own model manager, running groups of cells with prefix sharing."""

    def __init__(self, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)

    def pid(self) -> int:
        return os.getpid()

    def run_cells(self, spec: dict, config: dict, keys: list[str], upload_text: str | None):
        """Yields (CellResult, provenance) per cell of `keys`, as the in-process sweep runs them."""
        from engines.config.specs import RunConfig
        from engines.model.loading import MANAGER
        from engines.probes.runner import max_prompt_tokens
        from engines.studies.sweeps import build_cells, run_sweep

        sweep, run_config = SweepSpec.from_dict(spec), RunConfig.from_dict(config)
        loaded = MANAGER.get(run_config.model)
        others = {cell.key for cell in sweep.cells()} - set(keys)
        cells = build_cells(loaded.tokenizer, sweep, run_config.chat_template, others, upload_text,
                            max_prompt_tokens(loaded), run_config.transform)
        provenance = loaded.provenance()
        with MANAGER.lock:
            for result in run_sweep(loaded, sweep, cells, config=run_config):
                yield result, provenance


class RayWorkers:
    """Actors on a Ray cluster (RAY_ADDRESS or `address`; else a local one started here), one per GPU,
    or `workers` sharing the CPU cores. Kept between sweeps, so each worker loads its model once."""

    def __init__(self, workers: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError as exc:
            raise ClusterError("Ray is not installed: pip install -r requirements-cluster.txt, "
                               "or run the sweep in this process.") from exc
        self.ray = ray
        self.wanted = workers
        self.started_here = not ray.is_initialized()
        if self.started_here:
            lab_env = {k: v for k, v in os.environ.items() if k.startswith("CONTEXT_LAB_")}
            runtime_env = {"env_vars": lab_env | {"PYTHONPATH": str(ROOT)}}
            address = address or os.environ.get("RAY_ADDRESS")
            local = {} if address else {"num_cpus": os.cpu_count(), "include_dashboard": False,
                                        "object_store_memory": 256 * 2**20}
            try:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, **local)
            except (ConnectionError, RuntimeError) as exc:
                raise ClusterError(f"Could not reach the Ray cluster at {address}: {exc}. Check RAY_ADDRESS "
                                   "(ray start --head prints it).") from exc
        self.actors: list = []
        self.pid_of: dict = {}

    def top_up(self, device: str) -> None:
        """Start actors until there are as many as wanted (replacing any that died)."""
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
        cpus = int(resources.get("CPU", 1))
        count = self.wanted or gpus or min(CPU_WORKERS, cpus)
        if gpus:
            options, threads = {"num_gpus": 1, "num_cpus": 1}, None
        else:
            threads = max(1, cpus // count)
            options = {"num_cpus": threads}
        actor = self.ray.remote(SweepWorker).options(**options)
        started = [actor.remote(threads) for _ in range(count - len(self.actors))]
        self.actors += started
        self.pid_of |= dict(zip(started, self.ray.get([a.pid.remote() for a in started])))

    def pids(self) -> list[int]:
        """The workers' process ids (asked when they start: a busy actor answers only between groups)."""
        return [self.pid_of[actor] for actor in self.actors]

    def run(self, job) -> Iterator[tuple[CellResult, dict]]:
        """The job's remaining cells as they finish on any worker, with the provenance of the weights."""
        ray = self.ray
        self.top_up(job.config.model.device)
        pending = deque(groups(job.spec, {row["key"] for row in job.rows}, len(self.actors)))
        spec, config = job.spec.to_dict(), job.config.to_dict()
        idle, running = list(self.actors), {}  # generator -> (actor, keys not received yet)
        try:
            while pending or running:
                while idle and pending:
                    actor, keys = idle.pop(), pending.popleft()
                    running[actor.run_cells.remote(spec, config, keys, job.upload_text)] = (actor, keys)
                if not running:
                    raise ClusterError(f"Every Ray worker has stopped with {sum(map(len, pending))} cells left; "
                                       "the finished cells are saved: resume the sweep to run the rest.")
                [ready], _ = ray.wait(list(running), num_returns=1)
                actor, keys = running[ready]
                try:
                    result, provenance = ray.get(next(ready))
                except StopIteration:
                    del running[ready]
                    idle.append(actor)
                    continue
                except ray.exceptions.RayActorError:
                    log.warning("a Ray worker died; %d of its cells go to another worker", len(keys))
                    del running[ready]
                    self.actors.remove(actor)
                    if keys:
                        pending.appendleft(keys)
                    continue
                except ray.exceptions.RayTaskError as exc:  # the worker's own error, e.g. a haystack too long
                    if isinstance(exc.cause, LabError):
                        raise exc.cause from None
                    raise
                keys.remove(result.cell.key)
                yield result, provenance
        finally:
            for generator in running:
                ray.cancel(generator)

    def close(self) -> None:
        global _SHARED
        if _SHARED is self:
            _SHARED = None
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started_here:
            self.ray.shutdown()


_SHARED: RayWorkers | None = None


def shared_workers() -> RayWorkers:
    """The lab server's one pool (CONTEXT_LAB_RAY_WORKERS actors, or one per GPU of RAY_ADDRESS)."""
    global _SHARED
    if not cluster_offered():  # a request naming Ray cannot start a cluster the operator did not set up
        raise ClusterError("This lab was not started with a Ray cluster (RAY_ADDRESS or CONTEXT_LAB_RAY_WORKERS); "
                           "run the sweep in this process.")
    if _SHARED is None:
        wanted = os.environ.get("CONTEXT_LAB_RAY_WORKERS")
        _SHARED = RayWorkers(int(wanted) if wanted and wanted.isdigit() else None)
    return _SHARED
