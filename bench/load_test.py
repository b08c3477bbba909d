"""Load test: concurrent clients against a real web server, with a worker process doing the sweeps.

Starts ``patchstudio serve`` and ``patchstudio worker`` (on PostgreSQL when a URL is given, else on
a fresh SQLite file) with the shipped default model, stores a few runs to read back, then runs
``--clients`` threads for ``--seconds``, each looping over a mix of

- **read**: a permalink (``GET /runs/<id>`` page or its ``.json`` twin), served from the store;
- **run**: a fresh experiment (a new IOI prompt pair), computed in the request (``POST /api/runs``);
- **sweep**: a fresh per-position sweep over the synchronous cost, answered 202 and run by the
  worker; its latency is submit -> done, polled every 0.1 s;

and prints the throughput and p50/p95/p99 latency of each. Traffic goes to 127.0.0.1 only, bounded
in time. Not a test: the numbers depend on the machine (the README records them).

    python bench/load_test.py [--clients 16] [--seconds 60] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MIX = (("read", 0.70), ("run", 0.22), ("sweep", 0.08))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "patchstudio.cli", *args], env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def pairs(seed: int, n: int = 1) -> list[dict[str, str]]:
    from patchstudio.models.prompts import FAMILIES

    return [p.to_dict() for p in FAMILIES["ioi_swap"].make(n, seed=seed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--database-url", default=os.environ.get("PATCHSTUDIO_TEST_POSTGRES_URL"),
                        help="default: PATCHSTUDIO_TEST_POSTGRES_URL, else a fresh SQLite file")
    parser.add_argument("--web-threads", type=int, default=1, help="torch threads of the web process")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="patchstudio-load-"))
    url = args.database_url or f"sqlite:///{tmp}/load.sqlite3"
    schema = None
    if url.startswith("postgresql"):  # an isolated schema, dropped afterwards
        from sqlalchemy import create_engine, text

        schema = f"load_{random.randrange(16**8):08x}"
        with create_engine(url).begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHSTUDIO_")}
    env.update({
        "DATABASE_URL": url, "PYTHONPATH": os.pathsep.join([str(ROOT / "backend"), env.get("PYTHONPATH", "")]),
        "PATCHSTUDIO_BACKGROUND_PATCHED_RUNS": "100",  # a head sweep (32 runs) in the request; per position (~400) queued
        "PATCHSTUDIO_MAX_JOBS_PER_CLIENT": "1000", "PATCHSTUDIO_LOCAL_WORKERS": "0",  # sweeps: the worker process only
        "OMP_NUM_THREADS": str(args.web_threads),
    })
    web = start(["serve", "--port", str(port)], env, tmp / "web.log")
    worker = start(["worker"], {**env, "OMP_NUM_THREADS": "1"}, tmp / "worker.log")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or web.poll() is not None:
                sys.exit(f"the server did not start; see {tmp / 'web.log'}")
            time.sleep(0.3)
        with httpx.Client(base_url=base, timeout=60) as client:
            stored = [client.post("/api/runs", json={"prompts": pairs(10_000 + i), "component": "head"}).json()["id"] for i in range(20)]

        latencies: dict[str, list[float]] = {kind: [] for kind, _ in MIX}
        errors: list[str] = []
        stop_at = time.monotonic() + args.seconds
        seeds = iter(range(1_000_000))
        lock = threading.Lock()

        def client_loop(number: int) -> None:
            rng = random.Random(number)
            with httpx.Client(base_url=base, timeout=300) as client:
                while time.monotonic() < stop_at:
                    kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
                    with lock:
                        seed = next(seeds)
                    start_time = time.monotonic()
                    try:
                        if kind == "read":
                            run_id = rng.choice(stored)
                            response = client.get(f"/runs/{run_id}" + (".json" if rng.random() < 0.5 else ""))
                            ok = response.status_code == 200
                        elif kind == "run":
                            response = client.post("/api/runs", json={"prompts": pairs(seed), "component": "head"})
                            ok = response.status_code == 200
                        else:
                            response = client.post("/api/runs", json={"prompts": pairs(seed), "component": "head", "positions": "each"})
                            ok = response.status_code == 202
                            job = response.json().get("links", {}).get("job")
                            while ok and time.monotonic() < stop_at + 300:
                                status = client.get(job).json()["status"]
                                if status != "queued" and status != "running":
                                    ok = status == "done"
                                    break
                                time.sleep(0.1)
                    except httpx.HTTPError as exc:
                        ok, response = False, exc
                    elapsed = time.monotonic() - start_time
                    with lock:
                        if ok:
                            latencies[kind].append(elapsed)
                        else:
                            errors.append(f"{kind}: {getattr(response, 'status_code', response)}")

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - began

        print(f"{args.clients} clients, {args.seconds:.0f} s, {'PostgreSQL' if schema else 'SQLite'}, web + 1 worker process, "
              f"default model, {os.cpu_count()} CPU cores")
        print(f"{'kind':<6} {'count':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
        total = 0
        for kind, values in latencies.items():
            total += len(values)
            if values:
                print(f"{kind:<6} {len(values):>6} {len(values) / wall:>7.1f} {1000 * statistics.median(values):>8.0f} "
                      f"{1000 * percentile(values, 95):>8.0f} {1000 * percentile(values, 99):>8.0f}")
        print(f"all    {total:>6} {total / wall:>7.1f}   errors: {len(errors)} {sorted(set(errors))[:5]}")
    finally:
        for proc in (worker, web):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if schema:
            from sqlalchemy import create_engine, text

            with create_engine(args.database_url).begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
