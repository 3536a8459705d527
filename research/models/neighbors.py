"""Neighbourhood collaborative filtering on sparse matrices: ``UserKNN`` and ``ItemKNN``.

Size: one module because UserKNN and ItemKNN are one algorithm on transposed matrices: the
shared ``SimilarityRows`` and ``_KNN`` are most of it, each model a few dozen lines.

Both models share one machinery:

- **Similarity** between the rows of an entity x feature matrix (items x users for item-kNN,
  users x items for user-kNN): the products ``A[rows] @ A.T`` in float32, turned into cosine by
  the row norms, shrunk by the number of co-rating entities ``n_common``
  (``sim * n_common / (n_common + shrinkage)``), and pruned per block to each row's ``k``
  largest positive similarities. No Python loop over users or items: only over blocks of rows
  (for memory: one dense block is at most ``block_mb`` megabytes), optionally run on ``n_jobs``
  threads. With numba (``research.models._kernels``) the fit computes one triangle of the
  symmetric product with the co-count in the same pass (``SimilarityRows._top_k_triangle``);
  without it, or where the kept half would not fit ``TRIANGLE_MAX_BYTES``, scipy's sparse
  products of whole row blocks (values, then co-counts). Both give the same matrix bit for bit
  (``tests/test_fast_knn.py``). Measured at the full MAL size (``bench neighbors``: 310k users x
  17.5k anime, 57M ratings, top-20): see ``results/bench/SUMMARY.md``.
- **Rating prediction** as in Koren's KNNBaseline: the damped user + item biases of
  ``research.models.baselines.Bias`` (reused, not rewritten) plus the similarity-weighted mean of
  the neighbours' deviations from their own baseline,
  ``r̂(u,i) = b(u,i) + Σ_j s(i,j) (r(u,j) − b(u,j)) / Σ_j |s(i,j)|`` over the kept neighbours ``j``
  of ``i`` that ``u`` rated (user-kNN: the kept neighbours ``v`` of ``u`` that rated ``i``). With
  no such neighbour the prediction is the baseline.
- **Ranking** (``score``): item-kNN multiplies the user's history (binary interactions, or
  baseline-centred ratings) by the pruned similarity matrix; user-kNN sums the neighbours'
  histories weighted by similarity.
- **Fold-in** (``score_history``): the same products for a user given only by a ``History``.
  Item-kNN: the history (binary, or centred by the baseline with the user bias folded in by
  ``Bias.user_bias``) times the pruned similarity. User-kNN: the history centred as the fit
  centres a user, its similarity (same cosine, shrinkage and top-k pruning) to every training
  user, then the neighbours' histories; a row marked as a model user leaves that user out of its
  own neighbours, so a training user's own history gives back ``score``.

Similarity kinds (``similarity``), the centring applied to each rating before the cosine:

========================  ==========================================  ==================================
``similarity``            item-kNN (rows = items)                     user-kNN (rows = users)
========================  ==========================================  ==================================
``"adjusted_cosine"``     r − user mean (Sarwar et al.'s adjusted     r − item mean
                          cosine)
``"pearson"``             r − item mean                               r − user mean (Resnick)
``"baseline"``            r − b(u,i) (Bias residual; Surprise's       r − b(u,i)
                          pearson_baseline idea)
``"cosine"``              r (raw ratings)                             r
``"binary"``              1 for every interaction (rated or not)      1 for every interaction
========================  ==========================================  ==================================

"pearson" here is the centred cosine with each row's norm over *all* its ratings (not only the
co-rated ones) and the mean over all of them, the usual sparse approximation of Pearson's r.
Rows with a norm of 0 (a single rating equal to the mean) have similarity 0 to everything.
Unrated ("watched, not scored") interactions never enter a rating-based similarity or a rating
prediction; they count in "binary" similarity and in the binary ranking history.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from research import progress
from research.data.interactions import Interactions
from research.models import _kernels
from research.models._csr import interactions_csr
from research.models.base import History, NotSupported, Recommender, Stateful, top_k
from research.models.baselines import Bias

SIMILARITIES = ("adjusted_cosine", "pearson", "baseline", "cosine", "binary")
HISTORIES = ("binary", "centred")
#: the triangle path keeps the half of the similarity matrix it has computed but not yet used, at
#: most n_active² bytes (a quarter of the n² float32 entries, at the middle block); above this it
#: computes whole rows with scipy instead (user-kNN at 310k users: all-pairs is out of reach anyway)
TRIANGLE_MAX_BYTES = 2 * 2**30


# ---- the shared sparse machinery ----------------------------------------------------------
def row_means(m: sp.csr_matrix) -> np.ndarray:
    """Mean of the stored entries of each row of a CSR matrix (0 for an empty row)."""
    counts = np.diff(m.indptr)
    sums = np.asarray(m.sum(axis=1)).ravel()
    return np.divide(sums, counts, out=np.zeros(m.shape[0]), where=counts > 0)


def _with_data(pattern: sp.csr_matrix, data: np.ndarray) -> sp.csr_matrix:
    """A CSR matrix with ``pattern``'s structure and new values (explicit zeros are kept, so the
    structure - who rated what - survives a centred value of exactly 0)."""
    return sp.csr_matrix((np.asarray(data, dtype=np.float32), pattern.indices.copy(), pattern.indptr.copy()),
                         shape=pattern.shape)


def _block_rows(n_cols: int, block_mb: float) -> int:
    """Rows per block so that one dense float32 block of similarities stays under ``block_mb``
    (the similarity and the co-count blocks are both materialised densely for the pruning)."""
    return max(1, int(block_mb * 2**20 / (8 * max(n_cols, 1))))


class SimilarityRows(Stateful):
    """Cosine similarities (with shrinkage) between rows of a sparse entity x feature matrix.

    Args:
        values: CSR (n x f) of centred values; its structure is the "rated" pattern.
        shrinkage: ``s * n_common / (n_common + shrinkage)``; 0 disables it (and the co-count
            product, which costs as much as the similarity product itself).
        own: ``values`` is the caller's to give away (never used again): its arrays may be
            kept instead of copied.
    """

    #: saved: ``a`` and its row data; its transpose and pattern are rebuilt on load
    transient = ("at", "p", "pt")

    def __init__(self, values: sp.csr_matrix, shrinkage: float = 0.0, *, own: bool = False):
        values = values.tocsr()
        self.n = values.shape[0]
        # Rows with no stored value (anime nobody rated, users with only unrated rows) have
        # similarity 0 to everything: products run over the active rows only, which on a
        # catalogue-wide item vocabulary (17.5k anime, ~7k rated in the sample) is most of the work.
        self.active = np.flatnonzero(np.diff(values.indptr) > 0)
        self.position = np.full(self.n, -1, dtype=np.int64)
        self.position[self.active] = np.arange(len(self.active))
        if own and values.dtype == np.float32 and values.has_canonical_format:
            # ``values`` is ours (``own``): dropping its empty rows is a new indptr over the same
            # data and indices (the rows in order, as ``values[active]`` would copy them)
            ptr = values.indptr
            self.a = sp.csr_matrix((values.data[:values.nnz], values.indices[:values.nnz],
                                    np.r_[ptr[self.active], ptr[-1]].astype(ptr.dtype)),
                                   shape=(len(self.active), values.shape[1]))
        else:
            self.a = values[self.active].astype(np.float32).tocsr()
        self.a.sort_indices()
        # (numpy's pairwise sums of the squares: a compiled sequential sum differs in the last bit)
        sq = np.asarray(self.a.multiply(self.a).sum(axis=1)).ravel()
        self.norms = np.sqrt(sq).astype(np.float32)
        self.shrinkage = float(shrinkage)
        self.after_load()

    def after_load(self) -> None:
        self.at = self.a.T.tocsr()
        self.at.sort_indices()
        # the "rated" pattern and its transpose (for the co-count product of the scipy path) are
        # built on first use: the fit's triangle path counts co-ratings without them
        self.__dict__.pop("p", None)
        self.__dict__.pop("pt", None)

    def _patterns(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        if getattr(self, "p", None) is None:
            self.p = _with_data(self.a, np.ones(self.a.nnz))
            self.pt = self.p.T.tocsr()
        return self.p, self.pt

    def _compact_rows(self, rows) -> np.ndarray:
        """Dense (len(rows), n_active) similarities of compact rows to every active row."""
        return self._similarities(self.a[rows], self.norms[rows],
                                  self._patterns()[0][rows] if self.shrinkage > 0 else None)

    def query(self, values: sp.csr_matrix) -> np.ndarray:
        """Dense (m, n_active) similarities of new rows (m x features, centred as the fitted rows
        were; the structure is the "rated" pattern) to every active row, computed as for them."""
        q = sp.csr_matrix(values, dtype=np.float32)
        q.sort_indices()
        norms = np.sqrt(np.asarray(q.multiply(q).sum(axis=1)).ravel()).astype(np.float32)
        return self._similarities(q, norms, _with_data(q, np.ones(q.nnz)) if self.shrinkage > 0 else None)

    def _similarities(self, a_rows: sp.csr_matrix, nr: np.ndarray, p_rows) -> np.ndarray:
        """Shrunk cosine of rows ``a_rows`` (norms ``nr``, pattern ``p_rows``) to every active row."""
        num = (a_rows @ self.at).toarray()
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_r = np.where(nr > 0, 1.0 / nr, 0.0).astype(np.float32)
            inv_c = np.where(self.norms > 0, 1.0 / self.norms, 0.0).astype(np.float32)
        num *= inv_r[:, None]
        num *= inv_c[None, :]
        if self.shrinkage > 0:
            cnt = (p_rows @ self._patterns()[1]).toarray()
            num *= cnt / (cnt + np.float32(self.shrinkage))
        return num

    def _inverse_norms(self) -> np.ndarray:
        """1 / norm (0 for a zero norm) in float32, as ``_similarities`` scales rows and columns."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.norms > 0, 1.0 / self.norms, 0.0).astype(np.float32)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Dense (len(rows), n) float32 similarities of ``rows`` to every row (self included)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.n), dtype=np.float32)
        pos = self.position[rows]
        ok = pos >= 0
        if ok.any():
            out[np.ix_(ok, self.active)] = self._compact_rows(pos[ok])
        return out

    def top_k(self, k: int, block_mb: float = 64.0, n_jobs: int = 1, method: str = "auto") -> sp.csr_matrix:
        """The (n x n) similarity matrix pruned to each row's ``k`` largest positive entries
        (never the row itself), computed and pruned block by block.

        ``method``: "triangle" (compiled loops over one triangle with the co-count fused in, see
        ``_top_k_triangle``; needs numba), "products" (scipy sparse products of whole row blocks,
        values and co-counts separately), or "auto" (triangle when numba is there and the kept
        half fits ``TRIANGLE_MAX_BYTES``). Both give the same matrix, bit for bit."""
        if method not in ("auto", "triangle", "products"):
            raise ValueError(f"method must be auto, triangle or products, not {method!r}")
        m = len(self.active)
        if method == "auto":
            method = "triangle" if _kernels.AVAILABLE and m * m <= TRIANGLE_MAX_BYTES else "products"
        if method == "triangle":
            if not _kernels.AVAILABLE:
                raise ValueError("method 'triangle' needs numba (pip install numba)")
            return self._top_k_triangle(k, block_mb, n_jobs)
        return self._top_k_products(k, block_mb, n_jobs)

    def _assemble(self, parts: list) -> sp.csr_matrix:
        """The (n x n) CSR from the pruned blocks of compact rows, in row order."""
        counts = np.zeros(self.n, dtype=np.int64)
        if parts:
            counts[self.active] = np.concatenate([p[0] for p in parts])
            indices = self.active[np.concatenate([p[1] for p in parts])].astype(np.int32)
            data = np.concatenate([p[2] for p in parts])
        else:
            indices, data = np.zeros(0, np.int32), np.zeros(0, np.float32)
        indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
        # active rows are in increasing order, so compact row order = full row order, and the
        # mapped column indices stay sorted within each row
        return sp.csr_matrix((data, indices, indptr), shape=(self.n, self.n))

    def _top_k_triangle(self, k: int, block_mb: float, n_jobs: int) -> sp.csr_matrix:
        """``top_k`` from one triangle of the symmetric product.

        Blocks of rows (at most ``block_mb`` for the dense block and its left part) are taken
        from the last to the first. For block J = [a, b), ``_kernels.knn_rows`` accumulates, for
        each row i, the products and co-counts with every j < i in one pass over the users of i
        (no sparse result is built), and writes both orientations of each value: row i's into the
        block, row j's either into the block (j in J) or into ``low`` (j < a), which is cut into
        one tile per earlier block and kept until that block is assembled. The block's columns
        >= b are the tiles the later blocks (processed before) left for it. Each value is the
        float32 sequence of the "products" path (same summation order, same scaling order), so the
        dense rows are identical and ``_prune`` keeps the same neighbours. The kept tiles are at
        most a quarter of the n² matrix (n_active² bytes), at the middle block.
        """
        m = len(self.active)
        k = int(min(k, max(m - 1, 0)))
        if m == 0:
            return self._assemble([])
        step = _block_rows(m, block_mb)
        starts = list(range(0, m, step))
        bounds = [(a, min(a + step, m)) for a in starts]
        inv = self._inverse_norms()
        a_csr, x_csr = self.a, self.at
        pos = _kernels.positions(a_csr, x_csr.shape[0])  # each (row, feature) in the feature's row
        jobs = max(1, int(n_jobs))
        tiles: dict = {}
        parts: dict = {}
        pool = ThreadPoolExecutor(jobs) if jobs > 1 else None
        try:
            for bj in range(len(bounds) - 1, -1, -1):
                a, b = bounds[bj]
                cur = np.zeros((b - a, m), dtype=np.float32)
                low = np.empty((b - a, a), dtype=np.float32)
                # rows in small chunks so that threads share the uneven work (row i has i columns)
                chunk = max(1, (b - a) // (8 * jobs))
                tasks = [(r, min(r + chunk, b)) for r in range(a, b, chunk)]

                def run(t, a=a, cur=cur, low=low):
                    _kernels.knn_rows(a_csr, x_csr, pos, inv, self.shrinkage, t[0], t[1], a, cur, low)

                if pool is not None:
                    list(pool.map(run, tasks))
                else:
                    for t in tasks:
                        run(t)
                for bi in range(bj):  # the tiles row block bi will read as its columns [a, b)
                    ia, ib = bounds[bi]
                    tiles[(bj, bi)] = low[:, ia:ib].copy()
                del low
                for bi in range(bj + 1, len(bounds)):
                    ia, ib = bounds[bi]
                    cur[:, ia:ib] = tiles.pop((bi, bj)).T
                cur[np.arange(b - a), np.arange(a, b)] = -np.inf  # never one's own neighbour
                if pool is not None and b - a > 1:
                    cuts = np.linspace(0, b - a, min(jobs, b - a) + 1).astype(int)
                    pieces = list(pool.map(lambda c, cur=cur: _prune(cur[c[0]:c[1]], k), zip(cuts[:-1], cuts[1:])))
                    parts[bj] = tuple(np.concatenate([p[n] for p in pieces]) for n in range(3))
                else:
                    parts[bj] = _prune(cur, k)
                del cur
                # work so far: rows [a, m) of the lower triangle, (m² − a²) / 2 pairs
                progress.report((m * m - a * a) / 2, m * m / 2, "similarity pairs")
        finally:
            if pool is not None:
                pool.shutdown()
        return self._assemble([parts[bj] for bj in range(len(bounds))])

    def _top_k_products(self, k: int, block_mb: float = 64.0, n_jobs: int = 1) -> sp.csr_matrix:
        """``top_k`` by scipy sparse products of whole row blocks (values, then co-counts)."""
        m = len(self.active)
        k = int(min(k, max(m - 1, 0)))
        step = _block_rows(m, block_mb)
        starts = list(range(0, m, step))

        done = [0]
        lock = threading.Lock()

        def block(a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            b = min(a + step, m)
            sims = self._compact_rows(slice(a, b))
            sims[np.arange(b - a), np.arange(a, b)] = -np.inf  # never one's own neighbour
            out = _prune(sims, k)
            with lock:
                done[0] += b - a
                progress.report(done[0], m, "similarity rows")
            return out

        if n_jobs > 1 and len(starts) > 1:
            with ThreadPoolExecutor(n_jobs) as pool:
                parts = list(pool.map(block, starts))
        else:
            parts = [block(a) for a in starts]
        return self._assemble(parts)

    def query_top_k(self, values: sp.csr_matrix, k: int, exclude: np.ndarray | None = None) -> sp.csr_matrix:
        """(m x n) similarities of new rows to every row, pruned as ``top_k`` prunes a fitted
        row (same ``k`` cap, positive entries only). ``exclude[r]``: a row index that new row r
        may not have as a neighbour (itself, when it is a fitted row), or -1."""
        m_rows, m = values.shape[0], len(self.active)
        k = int(min(k, max(m - 1, 0)))
        sims = self.query(values)
        if exclude is not None:
            pos = self.position[np.maximum(exclude, 0)]
            ok = (np.asarray(exclude) >= 0) & (pos >= 0)
            sims[np.flatnonzero(ok), pos[ok]] = -np.inf
        counts = np.zeros(m_rows, dtype=np.int64)
        if m_rows and m:
            counts, idx, data = _prune(sims, k)
            indices = self.active[idx].astype(np.int32)
        else:
            indices, data = np.zeros(0, np.int32), np.zeros(0, np.float32)
        indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
        return sp.csr_matrix((data, indices, indptr), shape=(m_rows, self.n))

    def nearest(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact (unpruned) top-``k`` most similar rows to each query row, the query excluded."""
        query = np.asarray(query, dtype=np.int64)
        sims = self.rows(query).astype(np.float64)
        sims[np.arange(len(query)), query] = -np.inf
        return top_k(sims, k)


def _prune(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` largest positive entries of a dense block: (kept per row, their column
    indices in row order, sorted within a row, and their float32 values)."""
    if k == 0:
        return np.zeros(len(sims), np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    val = np.take_along_axis(sims, idx, axis=1)
    keep = val > 0  # only positive neighbours: a negative weight is not a neighbour
    order = np.argsort(idx, axis=1, kind="stable")  # canonical CSR: sorted column indices
    idx, val, keep = (np.take_along_axis(x, order, axis=1) for x in (idx, val, keep))
    return keep.sum(axis=1), idx[keep], val[keep].astype(np.float32)


def _pairwise_rows(left: sp.csr_matrix, right: sp.csr_matrix) -> np.ndarray:
    """Σ_c left[p, c] * right[p, c] for every row p (two CSR matrices of the same shape)."""
    return np.asarray(left.multiply(right).sum(axis=1), dtype=np.float64).ravel()


def _dense(m) -> np.ndarray:
    """A sparse product as a float64 array."""
    return np.asarray(m.toarray(), dtype=np.float64)


class _KNN(Recommender):
    """What UserKNN and ItemKNN share; subclasses say which side the rows are."""

    predicts_ratings = True
    _rows_are_items: bool = True
    #: derived from the saved ``sim_`` and ``resid`` on load
    transient = ("sim_abs_", "rated_pattern")
    #: users per chunk of the residual computation (its float64 temporaries: ~8 MB at MAL's mean)
    _residual_chunk = 1 << 15

    def __init__(self, k: int = 40, similarity: str = "adjusted_cosine", shrinkage: float = 100.0,
                 history: str = "binary", pred_damping: float = 0.0, user_damping: float = 5.0,
                 item_damping: float = 5.0, block_mb: float = 64.0, n_jobs: int = 1, seed: int = 0):
        super().__init__(seed)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, not {similarity!r}")
        if history not in HISTORIES:
            raise ValueError(f"history must be one of {', '.join(HISTORIES)}, not {history!r}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if float(shrinkage) < 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
        self.k, self.similarity, self.shrinkage = int(k), similarity, float(shrinkage)
        self.history = history
        if float(pred_damping) < 0:
            raise ValueError(f"pred_damping must be >= 0, got {pred_damping}")
        self.pred_damping = float(pred_damping)
        self.user_damping, self.item_damping = float(user_damping), float(item_damping)
        self.block_mb, self.n_jobs = float(block_mb), int(n_jobs)

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, train: Interactions, val: Interactions | None = None) -> "_KNN":
        self.meta = train.meta
        self.baseline = Bias(user_damping=self.user_damping, item_damping=self.item_damping,
                             seed=self.seed).fit(train)
        rated = interactions_csr(train, "rating")  # users x items, rated rows only (= train.to_csr)
        self.ones = interactions_csr(train, "ones")  # every interaction, rated or not
        # baseline residuals: the deviations that predictions average, and the "centred" history
        self.resid = self._residuals(rated)
        self.rated_pattern = _with_data(rated, np.ones(rated.nnz, dtype=np.float32))
        # the compared matrix may share its arrays with rated / ones / resid (never modified);
        # each temporary is dropped as soon as it is used: at the full MAL size (57M ratings)
        # one copy of the ratings is ~0.5 GB
        values = self._centred(rated)
        del rated
        if self._rows_are_items:
            rows = values.T.tocsr()  # a new matrix: SimilarityRows may keep its arrays
            del values
            self.sim_rows_ = SimilarityRows(rows, self.shrinkage, own=True)
            del rows
        else:
            self.sim_rows_ = SimilarityRows(values, self.shrinkage)
            del values
        self.sim_ = self.sim_rows_.top_k(self.k, self.block_mb, self.n_jobs)
        self.sim_abs_ = abs(self.sim_)
        return self

    def after_load(self) -> None:
        self.rated_pattern = _with_data(self.resid, np.ones(self.resid.nnz))  # resid has rated's structure
        self.sim_abs_ = abs(self.sim_)

    def _baseline_raw(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """μ + b_u + b_i without clipping (residuals must add back to the rating exactly)."""
        b = self.baseline
        return b.mu + b.bu[users] + b.bi[items]

    def _residuals(self, rated: sp.csr_matrix) -> sp.csr_matrix:
        """``rated`` minus the unclipped baseline μ + b_u + b_i (float64, stored as float32), by
        chunks of users so that no float64 copy of all the ratings is alive at once."""
        out = np.empty(rated.nnz, dtype=np.float32)
        indptr = rated.indptr
        step = self._residual_chunk
        for s in range(0, rated.shape[0], step):
            e = min(s + step, rated.shape[0])
            p0, p1 = int(indptr[s]), int(indptr[e])
            u = np.repeat(np.arange(s, e), np.diff(indptr[s:e + 1]))
            out[p0:p1] = rated.data[p0:p1] - self._baseline_raw(u, rated.indices[p0:p1])
        return _with_data(rated, out)

    def _centred(self, rated: sp.csr_matrix) -> sp.csr_matrix:
        """The users x items matrix whose rows/columns are compared (see the module table). It
        may be ``rated``, ``self.ones`` or ``self.resid`` itself: the caller copies before any
        change."""
        s = self.similarity
        if s == "binary":
            return self.ones
        if s == "cosine":
            return rated
        if s == "baseline":
            return self.resid
        user_side = (s == "adjusted_cosine") == self._rows_are_items  # centre by the user mean?
        if user_side:
            return _with_data(rated, rated.data - np.repeat(row_means(rated), np.diff(rated.indptr)))
        item_mean = row_means(rated.T.tocsr())
        return _with_data(rated, rated.data - item_mean[rated.indices])

    # ---- prediction ---------------------------------------------------------------------
    def predict(self, users, items) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        out = np.empty(len(users), dtype=np.float64)
        step = 1 << 16  # pairs per chunk: each chunk holds two (pairs x n) sparse row selections
        for s in range(0, len(users), step):
            u, i = users[s:s + step], items[s:s + step]
            out[s:s + step] = self._rating(self._baseline_raw(u, i), *self._num_den(u, i))
        return out

    def predict_grid(self, users, items) -> np.ndarray:
        """``predict`` of every pair of ``users`` x ``items``, shape ``(len(users), len(items))``:
        the same numerator and denominator as two sparse products instead of pair by pair (the
        blend's all-items scoring asks for whole blocks; 20x faster there on the 5k set). Equal to
        ``predict`` up to the float32 summation order of the products."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        b = self.baseline
        return self._rating(b.mu + b.bu[users][:, None] + b.bi[items][None, :], *self._num_den_grid(users, items))

    def _rating(self, base: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """The unclipped baseline plus the neighbours' damped deviation, clipped as the baseline
        clips. ``pred_damping``: a pseudo-weight of neighbours with deviation 0, so that one weak
        neighbour does not move the prediction by its whole deviation."""
        dev = np.divide(num, den + self.pred_damping, out=np.zeros_like(num), where=den > 0)
        b = self.baseline
        return np.clip(base + dev, b.lo, b.hi) if b.clip else base + dev

    def _num_den(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _num_den_grid(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # ---- neighbours ---------------------------------------------------------------------
    def neighbours(self, rows: np.ndarray) -> sp.csr_matrix:
        """The pruned similarity rows (``k`` kept neighbours) of ``rows``."""
        return self.sim_[np.asarray(rows)]

    def _history(self, users: np.ndarray) -> sp.csr_matrix:
        return self.ones[users] if self.history == "binary" else self.resid[users]

    # ---- fold-in ------------------------------------------------------------------------
    def _history_resid(self, history: History) -> sp.csr_matrix:
        """Baseline residuals r − (μ + b_u + b_i) of the history's ratings, b_u folded in by
        ``Bias.user_bias`` (the structure is the rated pattern, as ``resid``)."""
        h = history.rated
        row = np.repeat(np.arange(len(history)), np.diff(h.indptr))
        b = self.baseline
        base = b.mu + self.baseline.user_bias(history)[row] + b.bi[h.indices]
        return _with_data(h, h.data - base)

    def _history_rows(self, history: History) -> sp.csr_matrix:
        """What ``_history`` gives a fitted user, for history rows."""
        return history.seen.copy() if self.history == "binary" else self._history_resid(history)


class ItemKNN(_KNN):
    """Item-based kNN (Sarwar et al. 2001; Koren's KNNBaseline for ratings).

    Args:
        k: neighbours kept per item (the similarity matrix is pruned to them).
        similarity: "baseline" (default: ratings centred by the Bias baseline, i.e. by user and
            item means at once), "adjusted_cosine" (user mean), "pearson" (item mean), "cosine"
            (raw) or "binary" (interactions). Measured on the MAL sample (random 80/20, seed 0,
            k=40, shrinkage 100): baseline ndcg@10 0.338 / RMSE 1.256, adjusted_cosine 0.300 /
            1.249, pearson 0.307 / 1.267, cosine 0.325 / 1.262, binary 0.321 / 1.265; with k=100
            the baseline default gives 0.334 / 1.241 (bias alone: 1.282; popularity: 0.220).
        shrinkage: ``s * n_common / (n_common + shrinkage)``, n_common = users who rated both.
        history: ranking input, "binary" (every interaction = 1) or "centred" (baseline residuals
            of the rated ones): ``score(u) = history(u) @ S.T``, i.e. item i scores the sum of
            its kept neighbours' similarities over what u has seen. Binary ranks far better on
            the sample (ndcg@10 0.338 vs 0.241 at k=50): centring throws away "u watched it".
        pred_damping: pseudo-weight added to the denominator Σ|s| of the neighbour deviation
            (0 = KNNBaseline's plain weighted mean).
        user_damping, item_damping: the baseline's damping (see ``Bias``).
        block_mb: memory bound of one dense block of similarities.
        n_jobs: threads for the similarity (row chunks of the compiled triangle, or the scipy
            products' blocks).
        seed: unused (the model is deterministic); kept for the common interface.
    """

    _rows_are_items = True

    def __init__(self, k: int = 100, similarity: str = "baseline", shrinkage: float = 100.0,
                 history: str = "binary", pred_damping: float = 0.0, user_damping: float = 5.0,
                 item_damping: float = 5.0, block_mb: float = 64.0, n_jobs: int = 1, seed: int = 0):
        super().__init__(k, similarity, shrinkage, history, pred_damping, user_damping, item_damping,
                         block_mb, n_jobs, seed)

    def _num_den(self, users, items):
        s = self.sim_[items]
        return (_pairwise_rows(s, self.resid[users]),
                _pairwise_rows(self.sim_abs_[items], self.rated_pattern[users]))

    def _num_den_grid(self, users, items):
        return (_dense(self.resid[users] @ self.sim_[items].T),
                _dense(self.rated_pattern[users] @ self.sim_abs_[items].T))

    def score(self, users) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return np.asarray((self._history(users) @ self.sim_.T).toarray(), dtype=np.float64)

    def score_history(self, history: History) -> np.ndarray:
        """The history (binary, or baseline-centred with the user bias folded in) times the pruned
        similarity, as ``score``: exact for a fitted user's own history ("binary"; "centred" up to
        float rounding of the folded-in user bias)."""
        history = self.check_history(history)
        return np.asarray((self._history_rows(history) @ self.sim_.T).toarray(), dtype=np.float64)

    def similar_items(self, items, k: int = 10):
        """The ``k`` most similar items by the model's (shrunk, unpruned) similarity."""
        return self.sim_rows_.nearest(np.asarray(items), k)


class UserKNN(_KNN):
    """User-based kNN (Resnick et al. 1994; baseline-corrected like KNNBaseline for ratings).

    Args:
        k: neighbours kept per user.
        similarity: "pearson" (default: ratings centred by the user mean), "adjusted_cosine"
            (item mean), "baseline", "cosine" or "binary" (see the module table).
        shrinkage: ``s * n_common / (n_common + shrinkage)``, n_common = items both rated.
        history: what the neighbours contribute to the ranking, "binary" or "centred":
            ``score(u) = S[u] @ history(all users)``.
        pred_damping: pseudo-weight added to Σ|s| of the deviation (default 1: with few of the
            k neighbours having rated an item, the plain mean of one or two deviations is noise;
            on the sample RMSE 1.356 with 0 and k=40, 1.268 with 1 and k=100; bias: 1.282).
        user_damping, item_damping: the baseline's damping (see ``Bias``).
        block_mb: memory bound of one dense block of similarities. Fitting computes all user
            pairs: O(n_users²) outputs, fine for samples, not for 310k users.
        n_jobs: threads for the similarity (row chunks of the compiled triangle, or the scipy
            products' blocks).
        seed: unused (deterministic).
    """

    _rows_are_items = False
    transient = ("resid_t", "rated_pattern_t", "history_all")

    def __init__(self, k: int = 100, similarity: str = "pearson", shrinkage: float = 25.0,
                 history: str = "binary", pred_damping: float = 1.0, user_damping: float = 5.0,
                 item_damping: float = 5.0, block_mb: float = 64.0, n_jobs: int = 1, seed: int = 0):
        super().__init__(k, similarity, shrinkage, history, pred_damping, user_damping, item_damping,
                         block_mb, n_jobs, seed)

    def fit(self, train, val=None) -> "UserKNN":
        super().fit(train, val)
        # the item means the "adjusted_cosine" centring subtracts, kept for fold-in
        self.item_mean_ = row_means(interactions_csr(train, "rating").T.tocsr())
        self._transposes()
        return self

    def after_load(self) -> None:
        super().after_load()
        self._transposes()

    def _transposes(self) -> None:
        self.resid_t = self.resid.T.tocsr()
        self.rated_pattern_t = self.rated_pattern.T.tocsr()
        self.history_all = (self.ones if self.history == "binary" else self.resid)

    def _num_den(self, users, items):
        return (_pairwise_rows(self.sim_[users], self.resid_t[items]),
                _pairwise_rows(self.sim_abs_[users], self.rated_pattern_t[items]))

    def _num_den_grid(self, users, items):
        return (_dense(self.sim_[users] @ self.resid_t[items].T),
                _dense(self.sim_abs_[users] @ self.rated_pattern_t[items].T))

    def score(self, users) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return np.asarray((self.sim_[users] @ self.history_all).toarray(), dtype=np.float64)

    def _history_values(self, history: History) -> sp.csr_matrix:
        """The history rows centred as the fit centres a user's row (see the module table)."""
        s = self.similarity
        h = history.rated
        if s == "binary":
            return history.seen.copy()
        if s == "cosine":
            return h.copy()
        if s == "baseline":
            return self._history_resid(history)
        row = np.repeat(np.arange(len(history)), np.diff(h.indptr))
        if s == "pearson":  # user-kNN's pearson centres by the user's own mean
            return _with_data(h, h.data - row_means(h)[row])
        item_mean = getattr(self, "item_mean_", None)  # adjusted_cosine: the training item means
        if item_mean is None:
            raise NotSupported("UserKNN saved before fold-in existed has no item means for "
                               "adjusted_cosine: refit it")
        return _with_data(h, h.data - item_mean[h.indices])

    def score_history(self, history: History) -> np.ndarray:
        """Similarity of each history to every training user (the fit's centring, shrunk cosine
        and top-k pruning), then the neighbours' histories weighted by it, as ``score``. A row
        marked as a model user never has that user as a neighbour, so a fitted user's own
        history gives back ``score`` (float32 similarities, same operations)."""
        history = self.check_history(history)
        values = self._history_values(history)
        step = _block_rows(len(self.sim_rows_.active), self.block_mb)  # one dense block at a time
        out = np.zeros((len(history), self.history_all.shape[1]))
        for a in range(0, len(history), step):
            sims = self.sim_rows_.query_top_k(values[a:a + step], self.k, history.model_users[a:a + step])
            out[a:a + step] = (sims @ self.history_all).toarray()
        return out

    def similar_users(self, users, k: int = 10):
        """The ``k`` most similar users by the model's (shrunk, unpruned) similarity."""
        return self.sim_rows_.nearest(np.asarray(users), k)
