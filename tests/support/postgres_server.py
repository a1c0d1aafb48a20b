"""A real PostgreSQL server in a temporary directory on a free loopback port, started and stopped by
the tests (Debian's `postgresql` package provides the binaries; scripts/test.sh installs it)."""

from __future__ import annotations

import glob
import os
import pwd
import signal
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import stop_process
from tests.support.redis_server import free_port

DATABASE = "test"
USER = "postgres"


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql package)")
    return Path(initdb).parent


def _server_user() -> dict:
    """PostgreSQL refuses to run as root: as root, run it as the package's `postgres` user."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root without a `postgres` user to run PostgreSQL as") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PostgresServer:
    """Owns one postgres process with trust authentication and an empty database ``test``."""

    def __init__(self) -> None:
        self.bin = _binaries()
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bookrec-postgres-"))
        self.process: subprocess.Popen | None = None
        self.as_user = _server_user()
        if self.as_user:
            os.chown(self.workdir, self.as_user["user"], self.as_user["group"])

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={DATABASE} user={USER}"

    def url(self, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        data = self.workdir / "data"
        subprocess.run([str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, cwd=self.workdir, **self.as_user)
        # fsync off: a test database need not survive a power cut, and the tuner tests commit often.
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.workdir), "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir, **self.as_user)
        self._wait_and_create_database(timeout)
        return self

    def _wait_and_create_database(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} dbname=postgres user={USER}",
                                     connect_timeout=2, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {DATABASE}")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start on port {self.port}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGINT, timeout=20)  # "fast" shutdown: open connections do not hold it up
        self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)
