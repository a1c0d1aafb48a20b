"""Stopping the servers the tests start."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen | None, signum: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Ask ``process`` to stop with ``signum``; SIGKILL it if it has not stopped within ``timeout`` s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
