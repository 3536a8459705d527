"""Compiled loops for the symmetric sparse products of the classical models (numba, optional).

Two products dominate the classical models at the full MAL size (310k users x 17.5k anime, 57M
ratings): item-kNN's item x item similarity with its co-rating count, and EASE's Gram matrix XᵀX.
Both are symmetric, and scipy's sparse product computes all of it (twice for kNN: values and
counts), then builds a sparse result only to densify it. The loops here compute **one triangle**
(pairs j < i, or j <= i for the Gram), the **co-count in the same pass**, and write into a dense
block directly.

Exactness. Entry (i, j) is accumulated in the order scipy's ``csr_matmat`` uses for row i of
``A @ Aᵀ`` (over the users of item i in increasing order, ``sum += a_iu * a_ju`` in float32,
product rounded then sum rounded: no fused multiply-add, as LLVM does not contract without
fast-math flags), so it is bit for bit scipy's value; ``a_iu * a_ju == a_ju * a_iu`` exactly, so the
triangle holds both orientations. Every later step (cosine scaling, shrinkage) repeats numpy's
float32 operations in numpy's order. ``tests/test_fast_knn.py`` checks this against the scipy
path on random data.

Speed (measured on the full-size synthetic set, 2-core Xeon): the loops are memory-bound, ~2-3 ns
per product. Three things matter: unsigned index views (numba then drops its negative-index
handling: 1.5 vs 2.6 ns per product in cache), the row's sums and co-counts side by side in one
accumulator (2.4 vs 3.0 ns), and, per (item, user) pair, the end of the user's row prefix read
from ``positions`` (the position of the item in the user's row) instead of a data-dependent break,
with the next users' rows prefetched (early and middle rows, whose prefixes are short, ~30%
faster).

numba is optional: without it ``AVAILABLE`` is False and the callers use their scipy paths (same
results, slower).
"""
from __future__ import annotations

import importlib.util
import threading

import numpy as np

#: numba is there (imported, and the loops compiled, on first use: importing this module stays cheap)
AVAILABLE = importlib.util.find_spec("numba") is not None

_PREFETCH_AHEAD = 4  # users ahead whose row start is prefetched
_LOCK = threading.Lock()
prefetch = None  # set before the first compilation (the loops read it as a global)


def _jit(fn):
    """``fn`` compiled by numba (nogil, cached on disk, no fast-math) on its first call."""
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:
            with _LOCK:
                if compiled is None:
                    compiled = _compile(fn)
        return compiled(*args)

    call.__name__, call.__doc__, call.__wrapped__ = fn.__name__, fn.__doc__, fn
    return call


def _compile(fn):
    global prefetch
    import numba

    if prefetch is None:
        prefetch = _make_prefetch()
    return numba.njit(nogil=True, cache=True, fastmath=False, boundscheck=False)(fn)


def _make_prefetch():
    """``prefetch(array, index)``: a read hint for ``array[index]``'s cache line (LLVM's
    ``llvm.prefetch``); a no-op where the intrinsic cannot be built."""
    import numba

    try:
        from llvmlite import ir
        from numba import types
        from numba.core import cgutils
        from numba.extending import intrinsic

        @intrinsic
        def prefetch(typingctx, arr, idx):
            sig = types.void(arr, idx)

            def codegen(context, builder, signature, args):
                aryty = signature.args[0]
                ary = context.make_array(aryty)(context, builder, args[0])
                ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
                i8p = ir.IntType(8).as_pointer()
                i32 = ir.IntType(32)
                fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
                fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
                # read, high temporal locality, data cache
                builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                                  ir.Constant(i32, 1)])
                return context.get_dummy_value()

            return sig, codegen

        @numba.njit(nogil=True)
        def _probe(a):
            prefetch(a, 0)
            return a[0]

        _probe(np.zeros(1, np.float32))
        return prefetch
    except Exception:  # pragma: no cover - an older or newer LLVM: no hint, same results
        @numba.njit(nogil=True)
        def prefetch(arr, idx):
            pass

        return prefetch


@_jit
def _positions(a_indptr, a_indices, n_cols, pos):
    """``pos[p]``: where entry p of A (CSR, sorted indices) sits in Aᵀ as CSR (built by counting,
    as scipy's transpose lays it out: rows of Aᵀ in A's row order)."""
    nxt = np.zeros(n_cols + 1, dtype=np.int64)
    for p in range(len(a_indices)):
        nxt[a_indices[p] + 1] += 1
    for u in range(n_cols):
        nxt[u + 1] += nxt[u]
    for i in range(len(a_indptr) - 1):
        for p in range(a_indptr[i], a_indptr[i + 1]):
            u = a_indices[p]
            pos[p] = nxt[u]
            nxt[u] += 1


@_jit
def _gram_rows(a_indptr, a_indices, a_data, x_indptr, x_indices, x_data, pos, r0, r1, out):
    """Rows i in [r0, r1) of the lower triangle of ``A @ Aᵀ`` (A: rows x features CSR with sorted
    indices, X = Aᵀ as CSR with sorted indices, ``pos`` from ``_positions``): ``out[i, j] =
    Σ_u A[i,u] A[j,u]`` for j <= i, accumulated into ``out`` (zero there on entry); the upper
    triangle is not touched."""
    ahead = _PREFETCH_AHEAD
    for i in range(r0, r1):
        o = out[i]
        end = a_indptr[i + 1]
        for p in range(a_indptr[i], end):
            if p + ahead < end:
                s = x_indptr[a_indices[p + ahead]]
                prefetch(x_indices, s)
                prefetch(x_data, s)
            u = a_indices[p]
            v = a_data[p]
            for q in range(x_indptr[u], pos[p] + 1):  # the user's items j <= i
                o[x_indices[q]] += v * x_data[q]


@_jit
def _knn_rows(a_indptr, a_indices, a_data, x_indptr, x_indices, x_data, pos, inv, shrink,
              r0, r1, a, cur, low):
    """Item-kNN similarities of rows i in [r0, r1) of the block starting at row ``a``, from the
    triangle j < i (see ``research.models.neighbors.SimilarityRows``):

    - ``cur[i - a, j]`` for j < i: row i's value ``((num * inv_i) * inv_j) * f``;
    - the other orientation ``((num * inv_j) * inv_i) * f`` (row j's value at column i) goes to
      ``cur[j - a, i]`` when j is in the block, else to ``low[i - a, j]``;

    with ``num = Σ_u A[i,u] A[j,u]`` and ``f = cnt / (cnt + shrink)`` (float32, as numpy computes
    it; cnt = the number of common features) when ``shrink > 0``."""
    with_count = shrink > 0
    lam = np.float32(shrink)
    ahead = _PREFETCH_AHEAD
    # this row's sums and co-counts side by side (one cache line per update instead of two),
    # reset after each row
    acc = np.zeros((cur.shape[1], 2), dtype=np.float32)
    one = np.float32(1.0)
    for i in range(r0, r1):
        r = i - a
        end = a_indptr[i + 1]
        for p in range(a_indptr[i], end):
            if p + ahead < end:
                s = x_indptr[a_indices[p + ahead]]
                prefetch(x_indices, s)
                prefetch(x_data, s)
            u = a_indices[p]
            v = a_data[p]
            for q in range(x_indptr[u], pos[p]):  # the user's items j < i
                j = x_indices[q]
                acc[j, 0] += v * x_data[q]
                acc[j, 1] += one  # exact: counts stay far below 2**24
        inv_i = inv[i]
        for j in range(i):
            num = acc[j, 0]
            inv_j = inv[j]
            fa = (num * inv_i) * inv_j
            fb = (num * inv_j) * inv_i
            if with_count:
                c = acc[j, 1]
                f = c / (c + lam)
                fa = fa * f
                fb = fb * f
            acc[j, 0] = 0
            acc[j, 1] = 0
            cur[r, j] = fa
            if j >= a:
                cur[j - a, i] = fb
            else:
                low[r, j] = fb


def _unsigned(index: np.ndarray) -> np.ndarray:
    """The same index array viewed as unsigned (numba then skips its negative-index handling)."""
    return index.view(np.uint32 if index.dtype.itemsize == 4 else np.uint64)


def _csr(m):
    return _unsigned(m.indptr), _unsigned(m.indices), m.data


def positions(a, n_cols: int) -> np.ndarray:
    """Where each entry of CSR ``a`` sits in ``a.T.tocsr()`` (unsigned, as narrow as fits)."""
    pos = np.empty(a.nnz, dtype=np.uint32 if a.nnz < 2**32 else np.uint64)
    _positions(_unsigned(a.indptr), _unsigned(a.indices), int(n_cols), pos)
    return pos


def gram_rows(a, x, pos: np.ndarray, r0: int, r1: int, out: np.ndarray) -> None:
    """Python entry to ``_gram_rows`` (``a``, ``x`` = ``a.T``: scipy CSR, float32 data, sorted
    indices; ``pos = positions(a, x.shape[0])``)."""
    _gram_rows(*_csr(a), *_csr(x), pos, r0, r1, out)


def knn_rows(a, x, pos: np.ndarray, inv: np.ndarray, shrink: float, r0: int, r1: int, block_start: int,
             cur: np.ndarray, low: np.ndarray) -> None:
    """Python entry to ``_knn_rows``."""
    _knn_rows(*_csr(a), *_csr(x), pos, inv, np.float32(shrink), r0, r1, block_start, cur, low)
