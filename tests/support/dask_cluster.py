"""A real Dask cluster for the tests: one `dask scheduler` and N `dask worker` processes on free
loopback ports, started and stopped by the tests (no nanny, so killing a worker kills it for good)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.redis_server import free_port

DASK = str(Path(sys.executable).with_name("dask"))


class DaskCluster:
    def __init__(self, n_workers: int = 2, threads_per_worker: int = 1) -> None:
        self.port = free_port()
        self.n_workers = n_workers
        self.threads = threads_per_worker
        self.workdir = Path(tempfile.mkdtemp(prefix="bookrec-dask-"))
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}  # name -> process

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.workdir / log, "wb")  # noqa: SIM115 - the process owns it until it ends
        env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
        return subprocess.Popen([DASK, *args], stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)

    def start(self, timeout: float = 60.0) -> "DaskCluster":
        from distributed import Client

        self.scheduler = self._spawn(["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-dashboard", "--no-show"], "scheduler.log")
        for n in range(self.n_workers):
            self._spawn_worker(f"worker-{n}")
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(self.n_workers, timeout=max(1.0, deadline - time.monotonic()))
        return self

    def _spawn_worker(self, name: str) -> None:
        self.workers[name] = self._spawn(
            ["worker", self.address, "--name", name, "--nthreads", str(self.threads), "--no-nanny",
             "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(self.workdir / name)],
            f"{name}.log")

    def add_worker(self, name: str, timeout: float = 60.0) -> None:
        """One more worker, once the scheduler counts it."""
        from distributed import Client

        self._spawn_worker(name)
        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(len(self.workers), timeout=timeout)

    def kill_worker(self, name: str) -> None:
        """SIGKILL: the worker gets no chance to hand anything over."""
        process = self.workers[name]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.workdir.glob("*.log")))

    def stop(self) -> None:
        for process in [*self.workers.values(), self.scheduler]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers.values(), self.scheduler]:
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
