"""EASE: Embarrassingly Shallow Autoencoder (Steck 2019, "Embarrassingly Shallow Autoencoders for
Sparse Data", WWW '19).

An item-item linear model with a closed form. With X the users x items interaction matrix, EASE
solves ``min_B ||X - X B||² + λ ||B||²`` subject to ``diag(B) = 0``, whose solution is

    G = XᵀX + λI,   P = G⁻¹,   B_ij = −P_ij / P_jj  (i ≠ j),   B_jj = 0,

i.e. ``B = I − P · diag(1 / diag(P))`` (each column j divided by P_jj). A user's scores are
``x_u B``: item i gets ``Σ_j x_uj B_ji`` from the anime j in the user's history.

Decisions (and why):

- **Active items only**: X has one column per item with an interaction in the fitted data (the
  training part, plus validation with ``use_validation``), not one per catalogue anime (17,562
  in the MAL vocabulary, ~6.5k watched in the 100k-rating sample): the dense n x n matrices cost
  n² x 4 bytes, and an empty column's exact solution is a zero row and column of B anyway (G is
  block-diagonal in it), so dropping it loses nothing.
- **Weighting** (as the implicit models): ``"binary"`` puts 1 per interaction, rated or not;
  ``"rating"`` the rating where there is one and 1 where the anime was watched without a score.
- **Inverse**: float32 Cholesky, LAPACK ``spotrf`` then ``spotri``, both in place on the Gram
  buffer, then the triangle ``spotri`` leaves is mirrored block by block. Measured on the
  mal2020 sample's seed-0 training part (6,539 active items, 2 shared cores, λ=500): about 2 s
  (0.6 factorisation + 1.0 inversion + 0.2 mirroring), against about 5 s for
  ``scipy.linalg.cho_solve`` with an identity right-hand side and about 12 s for
  ``np.linalg.inv`` (LU, no use of symmetry). Accuracy: the largest error of B relative to a
  float64 inverse is 1.6e-6 at λ=500 (1e-4 at λ=1, where G is far worse conditioned), the same as
  ``cho_solve``'s; ranking needs no more. Working in place means a single n x n float32 matrix is
  alive at the peak (G, then its factor, then P, then B, in the same buffer).
- **Memory guard**: before the Gram matrix is allocated, the peak (n² x 4 bytes for that one
  matrix, plus the Gram blocks and the mirroring temporaries) is compared with
  ``memory_limit_gb`` (0: ``available_memory()``, which honours ``ANIMEREC_MEMORY_LIMIT``) and a
  ``ResourceError`` names both when it would not fit: at the full MAL catalogue (~17.5k active
  anime) B alone is ~1.1 GiB.
- **Gram matrix**: only its lower triangle, the part ``spotrf`` reads, computed by the compiled
  loops of ``research.models._kernels`` straight into the dense float32 buffer (rows over
  ``n_jobs`` threads), bit for bit what scipy's sparse product gives there
  (``tests/test_fast_knn.py``); without numba, XᵀX as a sparse product by column blocks of at
  most ``block_mb`` megabytes each (a one-shot sparse product of a nearly dense co-occurrence
  matrix would hold 2-3 n² matrices at once). At the full MAL size (17.5k active anime, 57M
  interactions) the triangle is about a third of the fit's CPU time and the inverse the rest
  (``bench autoencoders``, ``bench fullsize_models``).
- **Items that are not active** get, in ``score``, the row's lowest active score minus
  ``max(1, |lowest|)``: finite (the contract checks finiteness of whole rows) and strictly below
  every active item, so they are never recommended ahead of an item that had an interaction,
  even without the harness's candidate mask (which removes them anyway). Their exact EASE score
  0 would rank them above active items with negative scores.
- **similar_items(q)** ranks by row q of B, ``B[q, i]``: the score item i receives from q being
  in a history, i.e. exactly the recommendations of a user whose only anime is q ("watched q ->
  these"). The column ``B[:, q]`` (how much each history anime predicts q) is the other reading;
  the row is the one the recommender itself applies. Only active items are returned, never the
  query. A query with no interaction has, exactly, a zero row: every similarity is 0, and the k
  items returned (the contract wants k of them) are the most interacted-with, as a tie-break.
- **Fold-in** (``score_history``): a history weighted as the fit weights a user (binary, or
  rating / 1), restricted to the active items, times B, then the same fill for inactive items:
  for a fitted user's own history, exactly ``score``. Anime outside the active set (no training
  interaction) contribute nothing, as their rows of the exact solution are zero.
- **explain(user, item)**: the terms ``x_uj B_ji`` of the score, largest first; they sum (over
  the whole history) to the score.
- **Persistence**: every fitted attribute is a numpy array (``B``, ``active``, ``position``,
  ``item_counts``), a scipy CSR (``history``) or a plain scalar, for the data-only save format.

Defaults: ``lam`` (the best trial's value, rounded) and ``weighting = "rating"`` were chosen
on validation of seed 0 (of ``mal2020_sample.toml``) by ``experiments/configs/tune_ease.toml``,
never on test. "rating" won over "binary" there; λ is on the scale of the weighting (XᵀX's
entries are ~50x larger with ratings), so a ``weighting = "binary"`` table should set its own
``lam``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from research.data.interactions import Interactions
from research.data.sources import available_memory, human_bytes
from research.errors import ConfigError, ResourceError
from research.models import _kernels
from research.models._csr import interactions_csr
from research.models.base import History, NotSupported, Recommender, top_k

WEIGHTINGS = ("binary", "rating")
_MIRROR_ROWS = 1024  # rows per block when mirroring the triangle (a temporary of rows x n floats)


class EASE(Recommender):
    """EASE (Steck 2019): closed-form item-item weights over the active items.

    Args:
        lam: the L2 penalty λ added to the diagonal of XᵀX (> 0).
        weighting: "binary" (1 per interaction) or "rating" (rating where rated, 1 where watched
            without a score).
        use_validation: fit, and score, with train + validation (else train only).
        memory_limit_gb: memory the fit may use; 0 = ``available_memory()``.
        block_mb: size of one column block of the Gram product (sparse result, then dense copy)
            when numba is missing (the compiled triangle writes into the Gram buffer directly).
        n_jobs: threads for the Gram triangle (0 = every core this process may use); the
            factorisation's threads are the BLAS library's.
        seed: unused (the fit is deterministic); kept for the common signature.
    """

    predicts_ratings = False

    def __init__(self, lam: float = 6900.0, weighting: str = "rating", use_validation: bool = False,
                 memory_limit_gb: float = 0.0, block_mb: float = 64.0, n_jobs: int = 0, seed: int = 0):
        super().__init__(seed)
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"ease: weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
        if not float(lam) > 0:
            raise ConfigError(f"ease: lam must be > 0 (XᵀX is singular without it), got {lam}")
        if float(memory_limit_gb) < 0:
            raise ConfigError(f"ease: memory_limit_gb must be >= 0 (0 = available memory), got {memory_limit_gb}")
        if not float(block_mb) > 0:
            raise ConfigError(f"ease: block_mb must be > 0, got {block_mb}")
        if int(n_jobs) < 0:
            raise ConfigError(f"ease: n_jobs must be >= 0 (0 = every core this process may use), got {n_jobs}")
        self.lam = float(lam)
        self.weighting = weighting
        self.use_validation = bool(use_validation)
        self.memory_limit_gb = float(memory_limit_gb)
        self.block_mb = float(block_mb)
        self.n_jobs = int(n_jobs)

    # ---- fitting ------------------------------------------------------------------------
    def _matrix(self, data: Interactions) -> sp.csr_matrix:
        """users x items float32 CSR with the configured weighting (as the implicit models)."""
        m = interactions_csr(data, "ones")  # = data.to_csr, leaner on ordered rows
        if self.weighting == "rating":
            m = m.maximum(interactions_csr(data, "rating")).tocsr()  # rating where rated, 1 where not
        m = m.astype(np.float32)
        m.sort_indices()
        return m

    def peak_bytes(self, n_active: int, nnz: int = 0) -> int:
        """Bytes the fit needs at its peak for ``n_active`` items: the one n x n float32 buffer
        plus the larger of a Gram block (its sparse result, up to 8 B an entry plus scipy's
        intermediates, and its dense copy: 4 x ``block_mb`` at most) and the mirroring
        temporaries (a block of rows, and a diagonal block's copy and mask). ``nnz``: the
        interactions; the scipy path holds up to five sparse copies of them (CSR, CSC, the
        active-item slice, its transpose and CSC form: 8 bytes an entry each), the compiled one
        fewer (the active-item slice, its transpose and 4 bytes an entry of positions), so this
        is an upper bound for both (measured at the full MAL size, 17.5k anime and 57M
        interactions: 4.7 GB for the scipy path, 2.9 GB compiled, estimate 3.5 GB)."""
        n = int(n_active)
        gram_block = int(self.block_mb * 2**20) * 4
        mirror = _MIRROR_ROWS * n * 4 + 5 * _MIRROR_ROWS * _MIRROR_ROWS
        return n * n * 4 + max(gram_block, mirror) + 5 * 8 * int(nnz)

    def _check_memory(self, n_active: int, nnz: int = 0) -> None:
        need = self.peak_bytes(n_active, nnz)
        limit = self.memory_limit_gb * 2**30 if self.memory_limit_gb > 0 else available_memory()
        if need > limit:
            source = (f"memory_limit_gb = {self.memory_limit_gb:g}" if self.memory_limit_gb > 0
                      else "available")
            raise ResourceError(
                f"ease: {n_active:,} active items need about {human_bytes(need)} for the dense "
                f"{n_active:,} x {n_active:,} float32 weights, more than the {human_bytes(limit)} "
                f"{source}. Use fewer items (e.g. data.max_rows, or a smaller ratings file) or a "
                f"machine with more memory")

    def _gram(self, x: sp.csr_matrix) -> np.ndarray:
        """Dense float32 XᵀX + λI: its lower triangle (all that ``spotrf`` reads) by the compiled
        loops when numba is there, else the whole of it by column blocks of the sparse product.
        The triangle's entries are scipy's bit for bit (see ``research.models._kernels``)."""
        if _kernels.AVAILABLE:
            return self._gram_triangle(x)
        return self._gram_products(x)

    def _jobs(self) -> int:
        if self.n_jobs > 0:
            return self.n_jobs
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)

    def _gram_triangle(self, x: sp.csr_matrix) -> np.ndarray:
        """The lower triangle (C order, diagonal included) of XᵀX + λI; the upper one is left
        zero, to be overwritten by the inverse's mirroring. Rows in small chunks over
        ``n_jobs`` threads (row i has i + 1 entries: uneven work)."""
        n = x.shape[1]
        g = np.zeros((n, n), dtype=np.float32)
        if n == 0:
            return g
        xt = x.T.tocsr()  # items x users
        xt.sort_indices()
        pos = _kernels.positions(xt, x.shape[0])  # each (item, user) in the user's row of x
        jobs = self._jobs()
        chunk = max(1, min(64, n // (16 * jobs) or 1))
        tasks = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]

        def run(t, xt=xt, pos=pos):
            _kernels.gram_rows(xt, x, pos, t[0], t[1], g)

        if jobs > 1 and len(tasks) > 1:
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(run, tasks))
        else:
            for t in tasks:
                run(t)
        del xt, pos
        g[np.diag_indices(n)] += np.float32(self.lam)
        return g

    def _gram_products(self, x: sp.csr_matrix) -> np.ndarray:
        """Dense float32 XᵀX + λI, built by column blocks of the sparse product."""
        n = x.shape[1]
        g = np.empty((n, n), dtype=np.float32)
        xt = x.T.tocsr()
        xc = x.tocsc()
        step = max(1, int(self.block_mb * 2**20 // (4 * max(n, 1))))
        for a in range(0, n, step):
            b = min(a + step, n)
            g[:, a:b] = (xt @ xc[:, a:b]).toarray()
        g[np.diag_indices(n)] += np.float32(self.lam)
        return g

    @staticmethod
    def _invert_spd_inplace(g: np.ndarray) -> np.ndarray:
        """G⁻¹ of a symmetric positive definite C-ordered float32 matrix, in G's own buffer:
        ``spotrf`` + ``spotri`` on its Fortran view (the transpose, equal to G), then the
        triangle left stale is mirrored from the computed one, block by block."""
        n = len(g)
        f = g.T  # Fortran-ordered view of the same buffer: LAPACK works on it without a copy
        c, info = lapack.spotrf(f, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise ConfigError(f"ease: XᵀX + λI is not positive definite in float32 (spotrf info {info}); "
                              f"raise lam")
        inv, info = lapack.spotri(c, lower=0, overwrite_c=1)
        if info != 0:
            raise ConfigError(f"ease: inverting XᵀX + λI failed (spotri info {info}); raise lam")
        if not np.shares_memory(inv, g):  # LAPACK wrappers copied after all: keep their result
            g[...] = inv.T
        # the Fortran upper triangle is the C-order lower one: copy it to the upper one
        for a in range(0, n, _MIRROR_ROWS):
            b = min(a + _MIRROR_ROWS, n)
            g[a:b, b:] = g[b:, a:b].T
            blk = g[a:b, a:b]  # the diagonal block: its own lower triangle to its upper one
            np.copyto(blk, blk.T.copy(), where=np.triu(np.ones((b - a, b - a), dtype=bool), 1))
        return g

    def fit(self, train: Interactions, val: Interactions | None = None) -> "EASE":
        self.meta = train.meta
        data = train.concat(val) if self.use_validation and val is not None and len(val) else train
        x_full = self._matrix(data)
        self.n_items = int(x_full.shape[1])
        counts = np.bincount(x_full.indices, minlength=self.n_items)  # stored entries per column
        self.active = np.flatnonzero(counts > 0).astype(np.int64)
        self.item_counts = counts[self.active].astype(np.int64)
        self.position = np.full(self.n_items, -1, dtype=np.int64)
        self.position[self.active] = np.arange(len(self.active))
        n = len(self.active)
        self._check_memory(n, x_full.nnz)
        x = x_full[:, self.active].tocsr()
        del x_full  # ~0.5 GB at the full MAL size
        x.sort_indices()
        self.history = x  # the rows scored: the same weighting and parts as the fit
        p = self._invert_spd_inplace(self._gram(x))
        d = np.diag(p).copy()
        p /= -d[None, :]  # B_ij = -P_ij / P_jj, in place: column j divided by P_jj
        p[np.diag_indices(n)] = 0.0
        self.B = p
        return self

    # ---- scoring ------------------------------------------------------------------------
    def score(self, users) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return self._scores(self.history[users])

    def score_history(self, history: History) -> np.ndarray:
        """``x B`` for each history, ``x`` weighted as the fit weights a user and mapped onto the
        active items (see the module docstring); exact for a fitted user's own history."""
        history = self.check_history(history)
        x = history.seen
        if self.weighting == "rating":
            x = x.maximum(history.rated).tocsr()  # rating where rated, 1 where not (as _matrix)
        x = x.astype(np.float32)[:, self.active].tocsr()
        x.sort_indices()
        return self._scores(x)

    def _scores(self, x: sp.csr_matrix) -> np.ndarray:
        """Rows ``x`` (over the active items) times B; inactive items below every active one."""
        s = np.asarray(x @ self.B, dtype=np.float32)
        out = np.empty((x.shape[0], self.n_items), dtype=np.float32)
        if s.shape[1]:
            lo = s.min(axis=1, keepdims=True)
            out[:] = lo - np.maximum(np.float32(1.0), np.abs(lo))  # below every active item
        else:
            out[:] = 0.0
        out[:, self.active] = s
        return out

    def predict(self, users, items):
        raise NotSupported("EASE ranks; it does not predict ratings")

    def similar_items(self, items, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` active items by ``B[q, i]`` (see the module docstring), the query excluded.
        Items with no interaction: k most interacted-with items, similarity 0."""
        items = np.asarray(items, dtype=np.int64)
        pos = self.position[items]
        k_eff = min(int(k), len(self.active))
        out_i = np.full((len(items), k_eff), -1, dtype=np.int64)
        out_s = np.full((len(items), k_eff), -np.inf)
        known = pos >= 0
        if known.any():
            sims = self.B[pos[known]].astype(np.float64)
            sims[np.arange(len(sims)), pos[known]] = -np.inf  # never the query
            idx, val = top_k(sims, k_eff)
            out_i[known] = np.where(idx >= 0, self.active[np.maximum(idx, 0)], -1)
            out_s[known] = val
        if (~known).any():
            popular = np.lexsort((self.active, -self.item_counts))[:k_eff]
            out_i[~known] = self.active[popular]
            out_s[~known] = 0.0
        return out_i, out_s

    # ---- explanation --------------------------------------------------------------------
    def explain(self, user: int, item: int, k: int | None = 3) -> list[tuple[int, float]]:
        """The history anime contributing most to ``score(user)[item]``: (item index, x_uj B_ji)
        pairs, largest contribution first; ``k=None`` gives the whole history (the terms then sum
        to the score). An item with no interaction has no contributions: []."""
        pos = int(self.position[int(item)])
        if pos < 0:
            return []
        row = self.history[int(user)]
        contrib = row.data.astype(np.float64) * self.B[row.indices, pos].astype(np.float64)
        order = np.lexsort((row.indices, -contrib))
        if k is not None:
            order = order[:int(k)]
        return [(int(self.active[row.indices[o]]), float(contrib[o])) for o in order]
