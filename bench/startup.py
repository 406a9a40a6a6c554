"""Cold and warm start of the lab: seconds to a server answering HTTP 200, and the first probe's latency.

Cold = an empty CONTEXT_LAB_HOME (the embedded model is downloaded from PyPI and converted);
warm = the same home again. Run: python -m bench.startup
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gradio_client import Client

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_and_probe(home: Path) -> tuple[float, float]:
    port = free_port()
    env = os.environ | {"CONTEXT_LAB_HOME": str(home), "GRADIO_SERVER_PORT": str(port)}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200:
                    break
            except OSError:
                if time.perf_counter() - started > 600 or server.poll() is not None:
                    raise SystemExit("the server did not come up") from None
                time.sleep(0.2)
        ready = time.perf_counter() - started
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        asked = time.perf_counter()
        answer = client.predict("The capital of France is Paris.", "What is the capital of France?",
                                api_name="/probe")[0]
        first_probe = time.perf_counter() - asked
        assert "Paris" in answer, answer
        return ready, first_probe
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        cold = start_and_probe(Path(home))
        warm = start_and_probe(Path(home))
    print(f"cold start: server ready {cold[0]:.1f} s, first probe answered {cold[1]:.1f} s later "
          "(includes downloading and converting the embedded model)")
    print(f"warm start: server ready {warm[0]:.1f} s, first probe answered {warm[1]:.1f} s later")
    print(f"warm/cold first-probe ratio: {warm[1] / cold[1]:.2f}")


if __name__ == "__main__":
    main()
