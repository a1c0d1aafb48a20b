"""A memory prefetch hint for numba kernels (LLVM's ``llvm.prefetch``)."""

from __future__ import annotations

from llvmlite import ir
from numba import njit
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _prefetch(typingctx, array, row, col):
    """Ask the CPU to start loading ``array[row, col]`` into cache (LLVM's prefetch hint; no effect on results)."""
    if not (isinstance(array, nbtypes.Array) and array.ndim == 2
            and isinstance(row, nbtypes.Integer) and isinstance(col, nbtypes.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        index = [context.cast(builder, value, kind, nbtypes.intp) for value, kind in zip(args[1:], signature.args[1:])]
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, index)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(hint, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return nbtypes.void(array, row, col), codegen


@njit(inline="always", cache=True)
def prefetch_ratings(other, indices, lo, hi):
    """Prefetch the rows of ``other`` that ratings lo..hi-1 point to (both ends of each row: a row of
    k + 1 doubles can straddle two cache lines). The rows are scattered through memory; on the full
    data a block spends most of its time waiting for them without this."""
    last = other.shape[1] - 1
    for q in range(lo, hi):
        j = indices[q]
        _prefetch(other, j, 0)
        _prefetch(other, j, last)


@njit(inline="always", cache=True)
def prefetch_rows(other, indices, indptr, rows):
    """``prefetch_ratings`` for every rating of the given rows (a block about to be drawn)."""
    for row in rows:
        prefetch_ratings(other, indices, indptr[row], indptr[row + 1])
