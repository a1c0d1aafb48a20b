"""Ctrl-C and SIGTERM that land only where a trial computes, never in Optuna's bookkeeping.

An interrupt raised between a storage statement and its commit can leave that SQLite connection
holding its lock: Optuna then marks the trial failed through another connection, which waits for
the lock until the timeout, and the worker ends with "database is locked" instead of keeping its
finished trials. Optuna's own code between trials (ask, tell) is not written to be cut either.

So an interrupt raises at once only while the objective runs outside a storage call, which Optuna
handles by marking that trial failed. Anywhere else it is held, and raised at the next safe point:
when the objective's storage call returns, when the next objective starts, in the callback after
a trial is told, or when the block ends. A second one while one is held raises at once: a storage
that does not answer must not make the worker unstoppable.
"""

from __future__ import annotations

import functools
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from bookrec.exitcodes import Terminated


class InterruptGuard:
    """Use :meth:`installed` around ``study.optimize``, pass :meth:`objective`'s wrapper as the
    objective, and :meth:`raise_held` as the last callback."""

    def __init__(self) -> None:
        self.interruptible = False  # in the objective, outside a storage call
        self.held: KeyboardInterrupt | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        interrupt = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if self.interruptible or self.held is not None:
            self.held = None
            raise interrupt
        self.held = interrupt

    def raise_held(self, *_: object) -> None:
        if self.held is not None:
            interrupt, self.held = self.held, None
            raise interrupt

    def objective(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.raise_held()
            self.interruptible = True
            try:
                return func(*args, **kwargs)
            finally:
                self.interruptible = False
        return guarded

    def _storage_call(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                return method(*args, **kwargs)  # signals reach the main thread only (heartbeats run here)
            caller_interruptible, self.interruptible = self.interruptible, False
            try:
                return method(*args, **kwargs)
            finally:
                self.interruptible = caller_interruptible
                if caller_interruptible:
                    self.raise_held()
        return guarded

    @contextmanager
    def installed(self, storage: object) -> Iterator[None]:
        """Handle SIGINT and SIGTERM as above, with ``storage``'s public methods as the storage
        calls. Outside the main thread, where no signal arrives, the block runs as it is."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        names = [name for name in dir(type(storage)) if not name.startswith("_") and callable(getattr(storage, name))]
        for name in names:
            setattr(storage, name, self._storage_call(getattr(storage, name)))
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
            self.raise_held()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for name in names:
                delattr(storage, name)  # the class's own methods again
