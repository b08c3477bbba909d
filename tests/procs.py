"""Real processes for the job tests: ``patchstudio serve`` and ``patchstudio worker`` on the tiny
test model (``--model-loader model_loaders:tiny``), and an isolated PostgreSQL schema per test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("PATCHSTUDIO_TEST_POSTGRES_URL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHSTUDIO_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "backend"), os.environ.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # two cores shared by a web server and two workers
    for key, value in settings.items():
        env[key if key == "DATABASE_URL" else f"PATCHSTUDIO_{key.upper()}"] = str(value)
    return env


class Proc:
    """A patchstudio command in its own process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.args, self.env, self.log = args, env, log
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        handle = open(self.log, "ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "patchstudio.cli", *self.args], env=self.env, stdout=handle,
                                      stderr=subprocess.STDOUT, cwd=ROOT)
        handle.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Server(Proc):
    def __init__(self, env: dict[str, str], log: Path, port: int | None = None):
        self.port = port or free_port()
        super().__init__(["serve", "--host", "127.0.0.1", "--port", str(self.port), "--model-loader", "model_loaders:tiny"], env, log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 240) -> "Server":  # generous: three processes may import torch at once on 2 busy cores
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not get ready:\n{self.tail()}")


def worker(env: dict[str, str], log: Path, models: str = "default") -> Proc:
    return Proc(["worker", "--models", models, "--model-loader", "model_loaders:tiny"], env, log)


@contextlib.contextmanager
def stopped_after(procs: list[Proc], lines: int = 60) -> Iterator[list[Proc]]:
    """Stop every process of ``procs`` (a list the block may add to, or replace items of) at the end;
    if the block failed, print each one's last log lines first."""
    try:
        yield procs
    except BaseException:
        for proc in procs:
            print(f"--- {proc.log.name}\n{proc.tail(lines)}")
        raise
    finally:
        for proc in procs:
            proc.stop()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A SQLAlchemy URL whose connections use a fresh schema (dropped afterwards)."""
    from sqlalchemy import create_engine, text

    assert POSTGRES_URL
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own (initdb into a temporary directory, a free port), so
    a test can stop and restart it without touching the shared server other tests use."""

    def __init__(self, bindir: Path, data: Path, run_as: list[str]):
        self.bindir, self.data, self.run_as = bindir, data, run_as
        self.port = free_port()
        self.url = f"postgresql+psycopg://patchstudio@127.0.0.1:{self.port}/patchstudio"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        subprocess.run([*self.run_as, str(self.bindir / tool), *args], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def init(self) -> "PrivatePostgres":
        self._run("initdb", "-D", str(self.data), "-U", "patchstudio", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "patchstudio", "patchstudio")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.data / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL's binaries (Debian's /usr/lib/postgresql/N/bin, else pg_ctl on PATH)."""
    import shutil

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and shutil.which("initdb") else None


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster, removed afterwards; skips the test where none can be made (no
    binaries; root without a ``postgres`` user to run them as, since initdb refuses root)."""
    import pwd
    import shutil
    import tempfile

    import pytest

    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) to start a private cluster")
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run initdb as")
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root without runuser to run initdb as postgres")
        run_as = [runuser, "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="patchstudio-pg-"))
    data = base / "data"
    data.mkdir()
    if owner is not None:
        os.chmod(base, 0o755)
        os.chown(data, owner.pw_uid, owner.pw_gid)
    cluster = PrivatePostgres(bindir, data, run_as)
    try:
        cluster.init()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
