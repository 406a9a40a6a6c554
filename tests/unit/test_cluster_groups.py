"""How a sweep is cut for Ray workers, and the lab without Ray (no cluster started here)."""
import subprocess
import sys

from conftest import ROOT

from engines.studies.sweeps import SweepSpec
from services.cluster import groups


def test_groups_share_a_haystack_longest_first_and_give_every_worker_one():
    spec = SweepSpec("passkey", (400, 700), (0.0, 50.0, 100.0), (1, 2))
    assert groups(spec, set(), 2) == [[f"700:{d:g}:{s}" for d in (0, 50, 100)] for s in (1, 2)] + \
        [[f"400:{d:g}:{s}" for d in (0, 50, 100)] for s in (1, 2)]
    one_haystack = SweepSpec("passkey", (400,), (0.0, 25.0, 50.0, 75.0, 100.0), (1,))
    assert groups(one_haystack, {"400:0:1"}, 2) == [["400:25:1", "400:50:1"], ["400:75:1", "400:100:1"]]
    assert sorted(groups(one_haystack, set(), 8)) == sorted([f"400:{d:g}:1"] for d in (0, 25, 50, 75, 100))
    assert groups(one_haystack, {c.key for c in one_haystack.cells()}, 2) == []


def test_without_ray_the_ray_executor_says_what_to_install():
    hide_ray = "import sys; sys.modules['ray'] = None; from cli import run; sys.exit(run(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", hide_ray, "sweep", "--task", "passkey", "--lengths", "400",
                           "--depths", "50", "--executor", "ray", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Ray is not installed: pip install -r requirements-cluster.txt" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_request_cannot_start_a_cluster_the_operator_did_not_offer(monkeypatch):
    import pytest

    from services.cluster import ClusterError, shared_workers

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("CONTEXT_LAB_RAY_WORKERS", raising=False)
    with pytest.raises(ClusterError, match="not started with a Ray cluster"):
        shared_workers()
