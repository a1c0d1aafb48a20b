"""Counter-based random numbers inside the kernels: SplitMix64 streams per row, normals by a ziggurat."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_M53 = 1.0 / 9007199254740992.0

# ----------------------------------------------------------------------------- random numbers
# Ziggurat for N(0, 1) (Marsaglia & Tsang 2000) with 256 layers of equal area ZIG_AREA under
# f(x) = exp(-x^2 / 2). Edge e[0] = ZIG_AREA / f(R) is the base strip's width (rectangle plus tail),
# e[1] = R, e[i + 1] = f^-1(f(e[i]) + ZIG_AREA / e[i]), e[256] = 0. Layer i is the box of width e[i]
# between heights f(e[i]) and f(e[i + 1]); a uniform x in it with |x| < e[i + 1] is under the curve
# (99.3% of draws), the rest go through the exact wedge test or, from the base, the tail method.
ZIG_R = 3.6541528853610088
ZIG_AREA = 0.00492867323399


def _ziggurat_tables():
    def f(x):
        return math.exp(-0.5 * x * x)

    edges = np.zeros(257)
    edges[0] = ZIG_AREA / f(ZIG_R)
    edges[1] = ZIG_R
    for i in range(1, 255):
        edges[i + 1] = math.sqrt(-2.0 * math.log(ZIG_AREA / edges[i] + f(edges[i])))
    scale = 2.0**52  # the magnitude is a 52-bit integer
    widths = edges[:256] / scale
    accept = np.floor(edges[1:] / edges[:256] * scale).astype(np.uint64)
    heights = np.array([0.0] + [f(e) for e in edges[1:]])  # heights[i] = f(e[i]); heights[256] = 1
    return widths, accept, heights


ZIG_WIDTH, ZIG_ACCEPT, ZIG_HEIGHT = _ziggurat_tables()


@njit(inline="always", cache=True)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def row_state(seed, row):
    """Initial SplitMix64 state of one row's private stream."""
    return _mix64(np.uint64(seed) ^ (np.uint64(row + 1) * _GOLDEN))


@njit(inline="always", cache=True)
def _unit(bits):
    """A uniform double in (0, 1) from 53 random bits."""
    return (np.float64(bits >> np.uint64(11)) + 0.5) * _TWO_POW_M53


@njit(cache=True)
def fill_normals(state, out, n):
    """Fill ``out[:n]`` with independent N(0, 1) draws; returns the advanced state."""
    i = 0
    while i < n:
        state = state + _GOLDEN
        bits = _mix64(state)
        layer = np.int64(bits & np.uint64(0xFF))
        negative = (bits >> np.uint64(8)) & np.uint64(1)
        magnitude = bits >> np.uint64(12)
        x = np.float64(magnitude) * ZIG_WIDTH[layer]
        if magnitude >= ZIG_ACCEPT[layer]:
            if layer == 0:  # the tail beyond R (Marsaglia 1964)
                while True:
                    state = state + _GOLDEN
                    tx = -math.log(_unit(_mix64(state))) / ZIG_R
                    state = state + _GOLDEN
                    ty = -math.log(_unit(_mix64(state)))
                    if ty + ty > tx * tx:
                        break
                x = ZIG_R + tx
            else:  # the wedge: uniform height within the layer against the density
                state = state + _GOLDEN
                lo_f = ZIG_HEIGHT[layer]
                height = lo_f + _unit(_mix64(state)) * (ZIG_HEIGHT[layer + 1] - lo_f)
                if height >= math.exp(-0.5 * x * x):
                    continue
        out[i] = -x if negative else x
        i += 1
    return state
