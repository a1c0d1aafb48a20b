"""Compiling a kernel twice: a parallel and a serial twin."""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

from numba import njit


def twin(func, parallel: bool, **options):
    """A compiled twin (parallel or serial) of one kernel, compiled from its own copy of ``func``.

    numba's on-disk cache names entries by the function's qualified name and line, not by the
    ``parallel`` flag: two twins of one function would load each other's machine code (the
    ``*_par`` kernels silently ran on one thread, and a ``*_ser`` one could come back parallel).
    """
    name = f"{func.__name__}_{'par' if parallel else 'ser'}"
    copy = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__, func.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = func.__doc__
    return njit(parallel=parallel, cache=True, **options)(copy)


@contextmanager
def kernel_threads(n: int) -> Iterator[None]:
    """The parallel kernels run on at most ``n`` threads in this thread meanwhile: a process that
    shares the machine's cores with others (a cluster worker) must not spin on all of them."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)
