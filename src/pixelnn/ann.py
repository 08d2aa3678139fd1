"""Global-descriptor reduction and the size-aware FAISS index (issue 12, docs/scale.md).

PCA
---
:class:`PCAReducer` maps the 6400-d conv5 descriptors (unit rows) to at most 512 dimensions:
``y = normalise((x - mean) @ components.T)``, rounded to float16 precision so that a stored float16
row and a freshly computed one are the same numbers. It is fitted once, exactly (float64
covariance and ``numpy.linalg.eigh``), on at most ``sample`` evenly spaced rows.

Index
-----
:func:`choose_index` picks the index kind from the row count, the dimension and a RAM budget;
:class:`AnnIndex` builds, searches (with ``allowed`` / ``excluded`` row filters), writes and
memory-maps it. All kinds use inner product, so similarities are cosines for unit rows.

========= ================================================ ==========================================
kind      faiss                                            RAM (bytes, N rows of d dims)
========= ================================================ ==========================================
``flat``  ``IndexFlatIP``: exact                           ``4 N d``
``hnsw``  ``IndexHNSWSQ(d, QT_fp16, M)``: fp16 vectors     ``2 N d + 4 N (2 M) * 1.05 + 8 N``
          and an HNSW graph (2M links on level 0, a few     (vectors, level-0 links, upper levels and
          more on upper levels)                             offsets; about 1.3 GB for 1M x 512, M=32)
``ivfpq`` ``OPQ{m},IVF{nlist},PQ{m}``: rotated, product-   ``N (m + 8) + 4 nlist d + 4 d^2``
          quantised codes with int64 ids per inverted list  (codes and ids, centroids, rotation)
========= ================================================ ==========================================

Faiss is imported inside functions, so importing this module costs nothing.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pixelnn.errors import PixelNNError

#: Valid index kinds, from exact to most compressed.
INDEX_KINDS = ("flat", "hnsw", "ivfpq")


# ----------------------------------------------------------------------------------------------- PCA
def _as_rows(x: Any, dim: int | None = None, what: str = "vectors", rows: str = "N") -> np.ndarray:
    """``x`` as a C-contiguous (N, D) float32 array; a one-line PixelNNError otherwise."""
    x = np.asarray(x)
    if x.ndim == 1 and dim is not None and x.shape[0] == dim:
        x = x[None]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"({rows}, {dim})" if dim is not None else f"({rows}, D)"
        raise PixelNNError(f"{what} must be {want}, got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise PixelNNError(f"{what} must be float16, float32 or float64, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, d) divided by their L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def evenly_spaced(n: int, m: int) -> np.ndarray:
    """``min(n, m)`` sorted, evenly spaced row ids in 0..n-1 (deterministic), int64."""
    if m >= n:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, m).round().astype(np.int64))


class PCAReducer:
    """PCA reduction of unit descriptors to ``dims`` dimensions, with unit, float16-exact outputs.

    Attributes
    ----------
    mean : ndarray, (D,) float32
    components : ndarray, (d, D) float32
        Principal axes, largest variance first, each with its largest-magnitude entry positive.
    dims : int
        Output size d; equal to D (and ``components`` empty, (0, D)) for the identity reducer.

    Notes
    -----
    ``dims = 0`` or ``dims >= D`` gives the identity: :meth:`transform` then returns the input as
    float32, unchanged and not rounded (an unreduced library keeps float32 descriptors).
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        self.mean = np.ascontiguousarray(mean, np.float32).reshape(-1)  # (D,)
        self.components = np.ascontiguousarray(components, np.float32)  # (d, D)
        if self.components.ndim != 2 or self.components.shape[1] != self.mean.shape[0]:
            raise PixelNNError(f"PCA components must be (d, {self.mean.shape[0]}), got {self.components.shape}")

    @property
    def in_dims(self) -> int:
        """Input size D."""
        return int(self.mean.shape[0])

    @property
    def dims(self) -> int:
        """Output size d (D for the identity)."""
        return int(self.components.shape[0]) if self.is_reducing else self.in_dims

    @property
    def is_reducing(self) -> bool:
        """False for the identity reducer (no components)."""
        return self.components.shape[0] > 0

    def __repr__(self) -> str:
        return f"PCAReducer({self.in_dims} -> {self.dims})"

    @classmethod
    def fit(cls, x: np.ndarray, dims: int = 512, sample: int = 20000) -> "PCAReducer":
        """Fit on at most ``sample`` evenly spaced rows of ``x`` (N, D) (a memory map is fine).

        Parameters
        ----------
        x : ndarray, (N, D) float
            Unit descriptors.
        dims : int
            Output size d; 0 or >= D gives the identity reducer.
        sample : int
            Most rows used; deterministic (evenly spaced rows, exact float64 eigendecomposition).
        """
        if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 0:
            raise PixelNNError(f"PCA dims must be an integer >= 0 (0: no reduction), got {dims!r}")
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
            raise PixelNNError(f"PCA sample must be a positive integer, got {sample!r}")
        if np.ndim(x) != 2:
            raise PixelNNError(f"vectors must be (N, D), got shape {tuple(np.shape(x))}")
        n, dim = x.shape
        if dims == 0 or dims >= dim:
            return cls(np.zeros(dim, np.float32), np.zeros((0, dim), np.float32))
        rows = evenly_spaced(n, sample)
        if len(rows) < 2:
            raise PixelNNError(f"PCA needs at least 2 rows to fit, got {n}")
        xs = _as_rows(x[rows], dim).astype(np.float64)  # (M, D)
        mean = xs.mean(0)  # (D,)
        xs -= mean
        cov = xs.T @ xs / (len(xs) - 1)  # (D, D)
        del xs
        w, v = np.linalg.eigh(cov)  # ascending
        comp = v[:, ::-1][:, :dims].T  # (d, D) largest variance first
        flip = np.sign(comp[np.arange(dims), np.abs(comp).argmax(1)])
        comp *= np.where(flip == 0, 1.0, flip)[:, None]
        return cls(mean.astype(np.float32), comp.astype(np.float32))

    def transform(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Reduce ``x`` (N, D) to (N, d) float32: centred, projected, L2-normalised, rounded to float16.

        The identity reducer returns ``x`` as float32 unchanged.
        """
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.in_dims:
            raise PixelNNError(f"vectors must be (N, {self.in_dims}), got shape {tuple(x.shape)}")
        if not self.is_reducing:
            return _as_rows(x, self.in_dims)
        out = np.empty((len(x), self.dims), np.float32)
        ct = self.components.T  # (D, d)
        for i in range(0, len(x), batch_size):
            xb = _as_rows(x[i:i + batch_size], self.in_dims) - self.mean  # (B, D)
            out[i:i + len(xb)] = l2_normalize(xb @ ct).astype(np.float16)  # (B, d) float16-exact
        return out

    # ---------------------------------------------------------------- files
    def _tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components}

    def to_bytes(self) -> bytes:
        """The reducer as safetensors bytes (fields ``mean`` (D,), ``components`` (d, D) float32)."""
        from safetensors.numpy import save

        return save(self._tensors(), metadata={"format": "pixelnn-pca", "version": "1"})

    @classmethod
    def from_bytes(cls, data: bytes) -> "PCAReducer":
        """Inverse of :meth:`to_bytes`."""
        from safetensors.numpy import load

        try:
            t = load(bytes(data))
            return cls(t["mean"], t["components"])
        except (KeyError, ValueError, Exception) as e:  # safetensors raises its own SafetensorError
            if isinstance(e, PixelNNError):
                raise
            raise PixelNNError(f"not a PCA reducer file (safetensors with mean, components): "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write to a local ``path`` as safetensors, atomically (temporary file, then rename)."""
        _atomic_write(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCAReducer":
        """Read a reducer written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise PixelNNError(f"no PCA reducer file at {p}")
        return cls.from_bytes(p.read_bytes())


def _atomic_write(path: str | os.PathLike, data: bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------- choosing
#: Below this many rows, exact search (``flat``) is fast enough and always chosen.
FLAT_MAX_ROWS = 50_000
#: Above this many rows, ``hnsw`` is not chosen even when it fits (its build time grows past hours).
HNSW_MAX_ROWS = 5_000_000
#: Default HNSW links per node (level 0 has 2 M).
HNSW_M = 32
#: Default PQ sub-quantizers (bytes per vector) of ``ivfpq``.
PQ_M = 64


def index_ram_bytes(kind: str, n: int, dim: int, M: int = HNSW_M, nlist: int | None = None,
                    pq_m: int = PQ_M) -> int:
    """Estimated RAM of an index of ``n`` rows of ``dim`` dims (bytes); see the module docstring.

    ``flat``: 4 n d. ``hnsw`` (fp16 storage): 2 n d for the vectors, 4 n 2M * 1.05 for the links
    (level 0 plus the upper levels, 1/M of the nodes each), 8 n for offsets and levels.
    ``ivfpq``: n (pq_m + 8) for the codes and ids, 4 nlist d for the centroids, 4 d^2 for the OPQ
    rotation.
    """
    _check_kind(kind)
    n, dim = int(n), int(dim)
    if kind == "flat":
        return 4 * n * dim
    if kind == "hnsw":
        return 2 * n * dim + int(4 * n * 2 * M * 1.05) + 8 * n
    nlist = nlist or default_nlist(n)
    return n * (pq_m + 8) + 4 * nlist * dim + 4 * dim * dim


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` rows: about 4 sqrt(n), a power of two, between 1 and n // 39."""
    if n < 39:
        return 1
    c = 2 ** int(round(math.log2(max(1.0, 4 * math.sqrt(n)))))
    return int(max(1, min(c, n // 39)))


def choose_index(n: int, dim: int, memory_budget_bytes: int = 8 << 30) -> str:
    """The index kind for ``n`` rows of ``dim`` dims within ``memory_budget_bytes`` of RAM.

    ``flat`` (exact) below :data:`FLAT_MAX_ROWS` rows, or while its 4 n d bytes fit and n is under
    that; ``hnsw`` up to :data:`HNSW_MAX_ROWS` rows while :func:`index_ram_bytes` fits the budget;
    ``ivfpq`` beyond. Raises a one-line PixelNNError when even ``ivfpq`` does not fit.
    """
    for name, v in (("n", n), ("dim", dim), ("memory_budget_bytes", memory_budget_bytes)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "n" else 1):
            raise PixelNNError(f"choose_index: {name} must be a {'non-negative' if name == 'n' else 'positive'} "
                               f"integer, got {v!r}")
    if n < FLAT_MAX_ROWS:
        return "flat"
    if n <= HNSW_MAX_ROWS and index_ram_bytes("hnsw", n, dim) <= memory_budget_bytes:
        return "hnsw"
    need = index_ram_bytes("ivfpq", n, dim)
    if need > memory_budget_bytes:
        raise PixelNNError(f"{n} rows of {dim} dims need at least {need / 2**30:.2f} GiB for an ivfpq index; "
                           f"the memory budget is {memory_budget_bytes / 2**30:.2f} GiB")
    return "ivfpq"


def _check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise PixelNNError(f"invalid index kind {kind!r}; valid: {', '.join(INDEX_KINDS)}")


# ------------------------------------------------------------------------------------------ index
#: Default HNSW efSearch (unfiltered); filtered searches raise it, see :meth:`AnnIndex.search`.
EF_SEARCH = 64
#: Default HNSW efConstruction.
EF_CONSTRUCTION = 80
#: Filtered HNSW searches use at most this many times efSearch (see :meth:`AnnIndex.filtered_ef`).
FILTER_EF_MAX_FACTOR = 16
#: Default IVF cells visited per query.
NPROBE = 32
#: Filters allowing at most this many rows are searched exactly over the subset (brute force).
EXACT_BELOW = 20_000
#: Rows compared per block in the exact small-subset search.
EXACT_CHUNK = 8192
#: Most rows used to train ``ivfpq`` (OPQ, k-means, PQ).
TRAIN_ROWS = 100_000
#: Rows added per call while building.
ADD_CHUNK = 65536


def _new_faiss_index(kind: str, dim: int, n: int, M: int, ef_construction: int, nlist: int | None,
                     pq_m: int, pq_nbits: int = 8, opq_iter: int = 25) -> tuple[Any, dict[str, Any]]:
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, int(M), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        return index, {"M": int(M), "ef_construction": int(ef_construction)}
    if dim % pq_m:
        raise PixelNNError(f"ivfpq needs dim divisible by pq_m; got dim {dim}, pq_m {pq_m}; "
                           f"valid pq_m include {', '.join(str(m) for m in (8, 16, 32, 64) if dim % m == 0)}")
    nlist = int(nlist or default_nlist(n))
    index = faiss.index_factory(dim, f"OPQ{pq_m},IVF{nlist},PQ{pq_m}x{pq_nbits}", faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_VectorTransform(index.chain.at(0)).niter = int(opq_iter)
    return index, {"nlist": nlist, "pq_m": int(pq_m), "pq_nbits": int(pq_nbits)}


def _check_ids(ids: Any, n: int, what: str) -> np.ndarray | None:
    """Row ids as sorted unique int64 (a bool mask (n,) also accepted); a one-line error otherwise."""
    if ids is None:
        return None
    a = np.asarray(ids)
    if a.dtype == bool:
        if a.shape != (n,):
            raise PixelNNError(f"{what} as a boolean mask must have length {n}, got shape {a.shape}")
        return np.flatnonzero(a).astype(np.int64)
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise PixelNNError(f"{what} must be a 1-D array of integer row ids or a bool mask, got "
                           f"{a.dtype}{list(a.shape)}")
    a = a.astype(np.int64, copy=False)
    if np.any(a[1:] <= a[:-1]):
        a = np.unique(a)
    if a[0] < 0 or a[-1] >= n:
        bad = int(a[0] if a[0] < 0 else a[-1])
        raise PixelNNError(f"{what} row id {bad} is out of range; the index has {n} rows")
    return a


def _bitmap(ids: np.ndarray, n: int) -> np.ndarray:
    """The faiss ``IDSelectorBitmap`` layout of ``ids``: bit i & 7 of byte i >> 3, (ceil(n / 8),) uint8."""
    mask = np.zeros(n, bool)
    mask[ids] = True
    return np.packbits(mask, bitorder="little")


class AnnIndex:
    """A FAISS inner-product index over row ids 0..N-1, with filters, exact small-subset search and mmap IO.

    Build with :meth:`build` (or :meth:`read`); ``kind`` is one of :data:`INDEX_KINDS`.

    Attributes
    ----------
    kind : str
    dim : int
    params : dict
        Build parameters (``M``, ``ef_construction`` for hnsw; ``nlist``, ``pq_m`` for ivfpq).
    ef_search, nprobe : int
        Search-time defaults (hnsw, ivfpq), settable; :meth:`search` also takes them per call.
    exact_below : int
        Filters allowing at most this many rows are searched exactly (see :meth:`search`).

    Notes
    -----
    Exactness: ``flat`` is exact. For ``hnsw`` the small-subset search decodes the fp16 storage, so it
    equals brute force over the fp16-rounded vectors (exact for float16-exact inputs such as
    :meth:`PCAReducer.transform` output). For ``ivfpq`` it decodes the PQ codes: exhaustive over the
    subset (no probe misses) but with the PQ's approximate similarities.
    """

    def __init__(self, index: Any, kind: str, dim: int, params: dict[str, Any] | None = None):
        _check_kind(kind)
        self.index, self.kind, self.dim = index, kind, int(dim)
        self.params = dict(params or {})
        self.ef_search = EF_SEARCH
        self.nprobe = NPROBE
        self.exact_below = EXACT_BELOW

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"AnnIndex(kind={self.kind!r}, n={len(self)}, dim={self.dim}, params={self.params})"

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, vectors: np.ndarray | Iterable[np.ndarray], n: int | None = None, kind: str | None = None,
              memory_budget_bytes: int = 8 << 30, train: np.ndarray | None = None, M: int = HNSW_M,
              ef_construction: int = EF_CONSTRUCTION, nlist: int | None = None, pq_m: int = PQ_M,
              pq_nbits: int = 8, opq_iter: int = 25, train_rows: int = TRAIN_ROWS, chunk_size: int = ADD_CHUNK,
              dim: int | None = None) -> "AnnIndex":
        """Build an index over ``vectors``, trained once, filled chunk by chunk.

        Parameters
        ----------
        vectors : ndarray (N, d) or iterable of ndarray (M_i, d)
            Unit rows (float16/32; a memory map is read ``chunk_size`` rows at a time). An iterable is
            consumed once, so an ``ivfpq`` build from one needs ``train``.
        n : int, optional
            Total rows (needed with an iterable when ``kind`` is None, to choose it).
        kind : str, optional
            One of :data:`INDEX_KINDS`; default :func:`choose_index` (n, d, memory_budget_bytes).
        train : ndarray (T, d), optional
            Training rows for ``ivfpq``; default at most ``train_rows`` evenly spaced rows of ``vectors``.
        M, ef_construction : int
            HNSW links per node and construction beam.
        nlist, pq_m, pq_nbits, opq_iter : int
            ``ivfpq``: IVF cells (default :func:`default_nlist` (n)), PQ sub-quantizers, bits per
            sub-quantizer code (8: ``pq_m`` bytes per vector) and OPQ training iterations.
        dim : int, optional
            Vector size (needed only when an iterable yields nothing).
        """
        import faiss

        is_array = hasattr(vectors, "shape") and hasattr(vectors, "__getitem__")
        if is_array:
            if len(vectors.shape) != 2:
                raise PixelNNError(f"vectors must be (N, d), got shape {tuple(vectors.shape)}")
            n, dim = int(vectors.shape[0]), int(vectors.shape[1])
            chunks: Iterable[np.ndarray] = (vectors[i:i + chunk_size] for i in range(0, n, chunk_size))
        else:
            it = iter(vectors)
            first = next(it, None)
            if first is None:
                if dim is None:
                    raise PixelNNError("an empty iterable of vectors needs dim=")
                first = np.zeros((0, dim), np.float32)
            dim = int(np.shape(first)[1]) if np.ndim(first) == 2 else -1
            if dim < 1:
                raise PixelNNError(f"vector chunks must be (M, d), got shape {tuple(np.shape(first))}")
            chunks = _chain(first, it)
        if kind is None:
            if n is None:
                raise PixelNNError("AnnIndex.build from an iterable needs n= (or kind=) to choose the index")
            kind = choose_index(int(n), dim, memory_budget_bytes)
        _check_kind(kind)
        index, params = _new_faiss_index(kind, dim, int(n or 0), M, ef_construction, nlist, pq_m, pq_nbits,
                                         opq_iter)
        if not index.is_trained:
            if train is None:
                if not is_array:
                    raise PixelNNError(f"building {kind} from an iterable of chunks needs train= (a sample of rows)")
                train = vectors[evenly_spaced(n, train_rows)]
            train = _as_rows(train, dim, "training vectors")
            need = params.get("nlist", 1)
            if len(train) < need:
                raise PixelNNError(f"{kind} needs at least nlist={need} training rows, got {len(train)}")
            index.train(train)
            del train
        for chunk in chunks:
            x = _as_rows(chunk, dim)
            if len(x):
                index.add(x)
        out = cls(index, kind, dim, params)
        return out

    def add(self, x: np.ndarray) -> None:
        """Append rows ``x`` (M, d); they get row ids len..len+M-1."""
        x = _as_rows(x, self.dim)
        if len(x):
            self.index.add(x)

    # ---------------------------------------------------------------- searching
    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None,
               ef_search: int | None = None, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar rows of each query, optionally restricted to ``allowed`` minus ``excluded``.

        Parameters
        ----------
        q : ndarray, (Q, d) float32
            Queries (one (d,) vector is Q = 1).
        k : int
            Neighbours per query.
        allowed : ndarray of int64 row ids (sorted) or bool mask (N,), optional
            Only these rows. At most :attr:`exact_below` of them: exact brute force over the subset
            (decoded from the index storage); more: the faiss search with an ``IDSelectorBitmap``.
        excluded : ndarray of int64 row ids or bool mask (N,), optional
            Rows never returned (tombstones), ``IDSelectorNot`` in faiss.
        ef_search : int, optional
            HNSW beam (default :attr:`ef_search`); under a filter keeping a fraction f of the rows it is
            raised to :meth:`filtered_ef` (f), since HNSW skips filtered rows only after visiting them.
        nprobe : int, optional
            IVF cells visited (default :attr:`nprobe`).

        Returns
        -------
        D : ndarray, (Q, k) float32
            Similarities, decreasing; ``-inf`` where fewer than k rows are allowed.
        I : ndarray, (Q, k) int64
            Row ids; ``-1`` where fewer than k rows are allowed.
        """
        import faiss

        q = _as_rows(q, self.dim, "queries", rows="Q")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise PixelNNError(f"k must be a positive integer, got {k!r}")
        k, n = int(k), len(self)
        D = np.full((len(q), k), -np.inf, np.float32)
        I = np.full((len(q), k), -1, np.int64)
        allowed = _check_ids(allowed, n, "allowed")
        excluded = _check_ids(excluded, n, "excluded")
        if excluded is not None and len(excluded) == 0:
            excluded = None
        if allowed is not None and excluded is not None:
            allowed = np.setdiff1d(allowed, excluded, assume_unique=True)
            excluded = None
        live = n if allowed is None else len(allowed)
        if excluded is not None:
            live -= len(excluded)
        if len(q) == 0 or live == 0:
            return D, I
        if allowed is not None and len(allowed) <= self.exact_below:
            d, i = self._exact(q, min(k, live), allowed)
        else:
            keep: list[Any] = []  # faiss selectors and bitmaps, alive until the search returns
            sel = None
            if allowed is not None:
                bits = _bitmap(allowed, n)
                sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
                keep += [bits, sel]
            elif excluded is not None:
                bits = _bitmap(excluded, n)
                inner = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
                sel = faiss.IDSelectorNot(inner)
                keep += [bits, inner, sel]
            params = self._params(sel, live / n, ef_search, nprobe)
            d, i = self.index.search(q, min(k, live), params=params)
            del keep
        m = d.shape[1]
        D[:, :m], I[:, :m] = d, i
        bad = I < 0
        D[bad], I[bad] = -np.inf, -1
        return D, I

    def filtered_ef(self, fraction: float, ef_search: int | None = None) -> int:
        """HNSW efSearch for a filter keeping ``fraction`` of the rows: ``min(ef / fraction, 16 ef)``."""
        ef = int(ef_search or self.ef_search)
        if fraction >= 1:
            return ef
        return int(min(math.ceil(ef / max(fraction, 1e-9)), FILTER_EF_MAX_FACTOR * ef))

    def _params(self, sel: Any, fraction: float, ef_search: int | None, nprobe: int | None) -> Any:
        import faiss

        if self.kind == "hnsw":
            p = faiss.SearchParametersHNSW()
            p.efSearch = self.filtered_ef(fraction if sel is not None else 1.0, ef_search)
        elif self.kind == "ivfpq":
            p = faiss.SearchParametersIVF()
            p.nprobe = int(min(nprobe or self.nprobe, self.params.get("nlist", 1)))
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        if self.kind == "ivfpq":
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = p
            outer._inner = p  # keep the Python object alive
            return outer
        return p

    def stored_vectors(self) -> np.ndarray:
        """A read-only view of the stored vectors, (N, d): float32 for ``flat``, float16 for ``hnsw``.

        No copy: faiss's own buffer (the memory map after :meth:`read`), invalid after :meth:`add`.
        ``ivfpq`` keeps only PQ codes, so it has none (a one-line PixelNNError).
        """
        import faiss

        if self.kind == "ivfpq":
            raise PixelNNError("an ivfpq index keeps PQ codes, not vectors; valid kinds here: flat, hnsw")
        store = self.index if self.kind == "flat" else faiss.downcast_index(self.index.storage)
        n = int(store.ntotal)
        if n == 0:
            return np.zeros((0, self.dim), np.float32 if self.kind == "flat" else np.float16)
        raw = faiss.rev_swig_ptr(store.codes.data(), n * store.code_size)  # (n * code_size,) uint8
        v = raw.view(np.float32 if self.kind == "flat" else np.float16).reshape(n, self.dim)
        v.flags.writeable = False
        return v

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of rows ``ids`` (M,), decoded, (M, d) float32 (ivfpq: from the PQ codes)."""
        ids = np.ascontiguousarray(ids, np.int64)
        if self.kind != "ivfpq":
            return np.asarray(self.stored_vectors()[ids], np.float32)
        _ensure_direct_map(self.index)
        return self.index.reconstruct_batch(ids)

    def _exact(self, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive search over rows ``ids`` (sorted): (Q, k) similarities and row ids.

        ``flat`` / ``hnsw``: brute force over the stored (float32 / float16) vectors, ties to the lower
        row. ``ivfpq``: every IVF cell probed with the subset's bitmap, i.e. exhaustive with PQ similarities.
        """
        import faiss

        if self.kind == "ivfpq":
            bits = _bitmap(ids, len(self))
            sel = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bits))
            params = self._params(sel, 1.0, None, self.params.get("nlist", 1))
            return self.index.search(q, k, params=params)
        view = self.stored_vectors()
        top_d = np.empty((len(q), 0), np.float32)
        top_i = np.empty((len(q), 0), np.int64)
        for s in range(0, len(ids), EXACT_CHUNK):
            part = ids[s:s + EXACT_CHUNK]
            sims = q @ np.asarray(view[part], np.float32).T  # (Q, B)
            d = np.concatenate([top_d, sims], 1)
            i = np.concatenate([top_i, np.broadcast_to(part, sims.shape)], 1)
            if d.shape[1] > k:
                keep = np.argpartition(-d, k - 1, axis=1)[:, :k]  # (Q, k), unordered
                d, i = np.take_along_axis(d, keep, 1), np.take_along_axis(i, keep, 1)
            top_d, top_i = d, i
        order = _order(top_d, top_i)
        return np.take_along_axis(top_d, order, 1), np.take_along_axis(top_i, order, 1)

    # ---------------------------------------------------------------- files
    def _tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components}

    def to_bytes(self) -> bytes:
        """The reducer as safetensors bytes (fields ``mean`` (D,), ``components`` (d, D) float32)."""
        from safetensors.numpy import save

        return save(self._tensors(), metadata={"format": "pixelnn-pca", "version": "1"})

    @classmethod
    def from_bytes(cls, data: bytes) -> "PCAReducer":
        """Inverse of :meth:`to_bytes`."""
        from safetensors.numpy import load

        try:
            t = load(bytes(data))
            return cls(t["mean"], t["components"])
        except (KeyError, ValueError, Exception) as e:  # safetensors raises its own SafetensorError
            if isinstance(e, PixelNNError):
                raise
            raise PixelNNError(f"not a PCA reducer file (safetensors with mean, components): "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write to a local ``path`` as safetensors, atomically (temporary file, then rename)."""
        _atomic_write(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCAReducer":
        """Read a reducer written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise PixelNNError(f"no PCA reducer file at {p}")
        return cls.from_bytes(p.read_bytes())


def _atomic_write(path: str | os.PathLike, data: bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------- choosing
#: Below this many rows, exact search (``flat``) is fast enough and always chosen.
FLAT_MAX_ROWS = 50_000
#: Above this many rows, ``hnsw`` is not chosen even when it fits (its build time grows past hours).
HNSW_MAX_ROWS = 5_000_000
#: Default HNSW links per node (level 0 has 2 M).
HNSW_M = 32
#: Default PQ sub-quantizers (bytes per vector) of ``ivfpq``.
PQ_M = 64


def index_ram_bytes(kind: str, n: int, dim: int, M: int = HNSW_M, nlist: int | None = None,
                    pq_m: int = PQ_M) -> int:
    """Estimated RAM of an index of ``n`` rows of ``dim`` dims (bytes); see the module docstring.

    ``flat``: 4 n d. ``hnsw`` (fp16 storage): 2 n d for the vectors, 4 n 2M * 1.05 for the links
    (level 0 plus the upper levels, 1/M of the nodes each), 8 n for offsets and levels.
    ``ivfpq``: n (pq_m + 8) for the codes and ids, 4 nlist d for the centroids, 4 d^2 for the OPQ
    rotation.
    """
    _check_kind(kind)
    n, dim = int(n), int(dim)
    if kind == "flat":
        return 4 * n * dim
    if kind == "hnsw":
        return 2 * n * dim + int(4 * n * 2 * M * 1.05) + 8 * n
    nlist = nlist or default_nlist(n)
    return n * (pq_m + 8) + 4 * nlist * dim + 4 * dim * dim


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` rows: about 4 sqrt(n), a power of two, between 1 and n // 39."""
    if n < 39:
        return 1
    c = 2 ** int(round(math.log2(max(1.0, 4 * math.sqrt(n)))))
    return int(max(1, min(c, n // 39)))


def choose_index(n: int, dim: int, memory_budget_bytes: int = 8 << 30) -> str:
    """The index kind for ``n`` rows of ``dim`` dims within ``memory_budget_bytes`` of RAM.

    ``flat`` (exact) below :data:`FLAT_MAX_ROWS` rows, or while its 4 n d bytes fit and n is under
    that; ``hnsw`` up to :data:`HNSW_MAX_ROWS` rows while :func:`index_ram_bytes` fits the budget;
    ``ivfpq`` beyond. Raises a one-line PixelNNError when even ``ivfpq`` does not fit.
    """
    for name, v in (("n", n), ("dim", dim), ("memory_budget_bytes", memory_budget_bytes)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "n" else 1):
            raise PixelNNError(f"choose_index: {name} must be a {'non-negative' if name == 'n' else 'positive'} "
                               f"integer, got {v!r}")
    if n < FLAT_MAX_ROWS:
        return "flat"
    if n <= HNSW_MAX_ROWS and index_ram_bytes("hnsw", n, dim) <= memory_budget_bytes:
        return "hnsw"
    need = index_ram_bytes("ivfpq", n, dim)
    if need > memory_budget_bytes:
        raise PixelNNError(f"{n} rows of {dim} dims need at least {need / 2**30:.2f} GiB for an ivfpq index; "
                           f"the memory budget is {memory_budget_bytes / 2**30:.2f} GiB")
    return "ivfpq"


def _check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise PixelNNError(f"invalid index kind {kind!r}; valid: {', '.join(INDEX_KINDS)}")


# ------------------------------------------------------------------------------------------ index
#: Default HNSW efSearch (unfiltered); filtered searches raise it, see :meth:`AnnIndex.search`.
EF_SEARCH = 64
#: Default HNSW efConstruction.
EF_CONSTRUCTION = 80
#: Filtered HNSW searches use at most this many times efSearch (see :meth:`AnnIndex.filtered_ef`).
FILTER_EF_MAX_FACTOR = 16
#: Default IVF cells visited per query.
NPROBE = 32
#: Filters allowing at most this many rows are searched exactly over the subset (brute force).
EXACT_BELOW = 20_000
#: Rows compared per block in the exact small-subset search.
EXACT_CHUNK = 8192
#: Most rows used to train ``ivfpq`` (OPQ, k-means, PQ).
TRAIN_ROWS = 100_000
#: Rows added per call while building.
ADD_CHUNK = 65536


def _new_faiss_index(kind: str, dim: int, n: int, M: int, ef_construction: int, nlist: int | None,
                     pq_m: int, pq_nbits: int = 8, opq_iter: int = 25) -> tuple[Any, dict[str, Any]]:
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, int(M), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        return index, {"M": int(M), "ef_construction": int(ef_construction)}
    if dim % pq_m:
        raise PixelNNError(f"ivfpq needs dim divisible by pq_m; got dim {dim}, pq_m {pq_m}; "
                           f"valid pq_m include {', '.join(str(m) for m in (8, 16, 32, 64) if dim % m == 0)}")
    nlist = int(nlist or default_nlist(n))
    index = faiss.index_factory(dim, f"OPQ{pq_m},IVF{nlist},PQ{pq_m}x{pq_nbits}", faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_VectorTransform(index.chain.at(0)).niter = int(opq_iter)
    return index, {"nlist": nlist, "pq_m": int(pq_m), "pq_nbits": int(pq_nbits)}


def _check_ids(ids: Any, n: int, what: str) -> np.ndarray | None:
    """Row ids as sorted unique int64 (a bool mask (n,) also accepted); a one-line error otherwise."""
    if ids is None:
        return None
    a = np.asarray(ids)
    if a.dtype == bool:
        if a.shape != (n,):
            raise PixelNNError(f"{what} as a boolean mask must have length {n}, got shape {a.shape}")
        return np.flatnonzero(a).astype(np.int64)
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise PixelNNError(f"{what} must be a 1-D array of integer row ids or a bool mask, got "
                           f"{a.dtype}{list(a.shape)}")
    a = a.astype(np.int64, copy=False)
    if np.any(a[1:] <= a[:-1]):
        a = np.unique(a)
    if a[0] < 0 or a[-1] >= n:
        bad = int(a[0] if a[0] < 0 else a[-1])
        raise PixelNNError(f"{what} row id {bad} is out of range; the index has {n} rows")
    return a


def _bitmap(ids: np.ndarray, n: int) -> np.ndarray:
    """The faiss ``IDSelectorBitmap`` layout of ``ids``: bit i & 7 of byte i >> 3, (ceil(n / 8),) uint8."""
    mask = np.zeros(n, bool)
    mask[ids] = True
    return np.packbits(mask, bitorder="little")


class AnnIndex:
    """A FAISS inner-product index over row ids 0..N-1, with filters, exact small-subset search and mmap IO.

    Build with :meth:`build` (or :meth:`read`); ``kind`` is one of :data:`INDEX_KINDS`.

    Attributes
    ----------
    kind : str
    dim : int
    params : dict
        Build parameters (``M``, ``ef_construction`` for hnsw; ``nlist``, ``pq_m`` for ivfpq).
    ef_search, nprobe : int
        Search-time defaults (hnsw, ivfpq), settable; :meth:`search` also takes them per call.
    exact_below : int
        Filters allowing at most this many rows are searched exactly (see :meth:`search`).

    Notes
    -----
    Exactness: ``flat`` is exact. For ``hnsw`` the small-subset search decodes the fp16 storage, so it
    equals brute force over the fp16-rounded vectors (exact for float16-exact inputs such as
    :meth:`PCAReducer.transform` output). For ``ivfpq`` it decodes the PQ codes: exhaustive over the
    subset (no probe misses) but with the PQ's approximate similarities.
    """

    def __init__(self, index: Any, kind: str, dim: int, params: dict[str, Any] | None = None):
        _check_kind(kind)
        self.index, self.kind, self.dim = index, kind, int(dim)
        self.params = dict(params or {})
        self.ef_search = EF_SEARCH
        self.nprobe = NPROBE
        self.exact_below = EXACT_BELOW

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"AnnIndex(kind={self.kind!r}, n={len(self)}, dim={self.dim}, params={self.params})"

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, vectors: np.ndarray | Iterable[np.ndarray], n: int | None = None, kind: str | None = None,
              memory_budget_bytes: int = 8 << 30, train: np.ndarray | None = None, M: int = HNSW_M,
              ef_construction: int = EF_CONSTRUCTION, nlist: int | None = None, pq_m: int = PQ_M,
              pq_nbits: int = 8, opq_iter: int = 25, train_rows: int = TRAIN_ROWS, chunk_size: int = ADD_CHUNK,
              dim: int | None = None) -> "AnnIndex":
        """Build an index over ``vectors``, trained once, filled chunk by chunk.

        Parameters
        ----------
        vectors : ndarray (N, d) or iterable of ndarray (M_i, d)
            Unit rows (float16/32; a memory map is read ``chunk_size`` rows at a time). An iterable is
            consumed once, so an ``ivfpq`` build from one needs ``train``.
        n : int, optional
            Total rows (needed with an iterable when ``kind`` is None, to choose it).
        kind : str, optional
            One of :data:`INDEX_KINDS`; default :func:`choose_index` (n, d, memory_budget_bytes).
        train : ndarray (T, d), optional
            Training rows for ``ivfpq``; default at most ``train_rows`` evenly spaced rows of ``vectors``.
        M, ef_construction : int
            HNSW links per node and construction beam.
        nlist, pq_m, pq_nbits, opq_iter : int
            ``ivfpq``: IVF cells (default :func:`default_nlist` (n)), PQ sub-quantizers, bits per
            sub-quantizer code (8: ``pq_m`` bytes per vector) and OPQ training iterations.
        dim : int, optional
            Vector size (needed only when an iterable yields nothing).
        """
        import faiss

        is_array = hasattr(vectors, "shape") and hasattr(vectors, "__getitem__")
        if is_array:
            if len(vectors.shape) != 2:
                raise PixelNNError(f"vectors must be (N, d), got shape {tuple(vectors.shape)}")
            n, dim = int(vectors.shape[0]), int(vectors.shape[1])
            chunks: Iterable[np.ndarray] = (vectors[i:i + chunk_size] for i in range(0, n, chunk_size))
        else:
            it = iter(vectors)
            first = next(it, None)
            if first is None:
                if dim is None:
                    raise PixelNNError("an empty iterable of vectors needs dim=")
                first = np.zeros((0, dim), np.float32)
            dim = int(np.shape(first)[1]) if np.ndim(first) == 2 else -1
            if dim < 1:
                raise PixelNNError(f"vector chunks must be (M, d), got shape {tuple(np.shape(first))}")
            chunks = _chain(first, it)
        if kind is None:
            if n is None:
                raise PixelNNError("AnnIndex.build from an iterable needs n= (or kind=) to choose the index")
            kind = choose_index(int(n), dim, memory_budget_bytes)
        _check_kind(kind)
        index, params = _new_faiss_index(kind, dim, int(n or 0), M, ef_construction, nlist, pq_m, pq_nbits,
                                         opq_iter)
        if not index.is_trained:
            if train is None:
                if not is_array:
                    raise PixelNNError(f"building {kind} from an iterable of chunks needs train= (a sample of rows)")
                train = vectors[evenly_spaced(n, train_rows)]
            train = _as_rows(train, dim, "training vectors")
            need = params.get("nlist", 1)
            if len(train) < need:
                raise PixelNNError(f"{kind} needs at least nlist={need} training rows, got {len(train)}")
            index.train(train)
            del train
        for chunk in chunks:
            x = _as_rows(chunk, dim)
            if len(x):
                index.add(x)
        out = cls(index, kind, dim, params)
        return out

    def add(self, x: np.ndarray) -> None:
        """Append rows ``x`` (M, d); they get row ids len..len+M-1."""
        x = _as_rows(x, self.dim)
        if len(x):
            self.index.add(x)

    # ---------------------------------------------------------------- searching
    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None,
               ef_search: int | None = None, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar rows of each query, optionally restricted to ``allowed`` minus ``excluded``.

        Parameters
        ----------
        q : ndarray, (Q, d) float32
            Queries (one (d,) vector is Q = 1).
        k : int
            Neighbours per query.
        allowed : ndarray of int64 row ids (sorted) or bool mask (N,), optional
            Only these rows. At most :attr:`exact_below` of them: exact brute force over the subset
            (decoded from the index storage); more: the faiss search with an ``IDSelectorBitmap``.
        excluded : ndarray of int64 row ids or bool mask (N,), optional
            Rows never returned (tombstones), ``IDSelectorNot`` in faiss.
        ef_search : int, optional
            HNSW beam (default :attr:`ef_search`); under a filter keeping a fraction f of the rows it is
            raised to :meth:`filtered_ef` (f), since HNSW skips filtered rows only after visiting them.
        nprobe : int, optional
            IVF cells visited (default :attr:`nprobe`).

        Returns
        -------
        D : ndarray, (Q, k) float32
            Similarities, decreasing; ``-inf`` where fewer than k rows are allowed.
        I : ndarray, (Q, k) int64
            Row ids; ``-1`` where fewer than k rows are allowed.
        """
        import faiss

        q = _as_rows(q, self.dim, "queries", rows="Q")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise PixelNNError(f"k must be a positive integer, got {k!r}")
        k, n = int(k), len(self)
        D = np.full((len(q), k), -np.inf, np.float32)
        I = np.full((len(q), k), -1, np.int64)
        allowed = _check_ids(allowed, n, "allowed")
        excluded = _check_ids(excluded, n, "excluded")
        if excluded is not None and len(excluded) == 0:
            excluded = None
        if allowed is not None and excluded is not None:
            allowed = np.setdiff1d(allowed, excluded, assume_unique=True)
            excluded = None
        live = n if allowed is None else len(allowed)
        if excluded is not None:
            live -= len(excluded)
        if len(q) == 0 or live == 0:
            return D, I
        if allowed is not None and len(allowed) <= self.exact_below:
            d, i = self._exact(q, min(k, live), allowed)
        else:
            keep: list[Any] = []  # faiss selectors and bitmaps, alive until the search returns
            sel = None
            if allowed is not None:
                bits = _bitmap(allowed, n)
                sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
                keep += [bits, sel]
            elif excluded is not None:
                bits = _bitmap(excluded, n)
                inner = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
                sel = faiss.IDSelectorNot(inner)
                keep += [bits, inner, sel]
            params = self._params(sel, live / n, ef_search, nprobe)
            d, i = self.index.search(q, min(k, live), params=params)
            del keep
        m = d.shape[1]
        D[:, :m], I[:, :m] = d, i
        bad = I < 0
        D[bad], I[bad] = -np.inf, -1
        return D, I

    def filtered_ef(self, fraction: float, ef_search: int | None = None) -> int:
        """HNSW efSearch for a filter keeping ``fraction`` of the rows: ``min(ef / fraction, 16 ef)``."""
        ef = int(ef_search or self.ef_search)
        if fraction >= 1:
            return ef
        return int(min(math.ceil(ef / max(fraction, 1e-9)), FILTER_EF_MAX_FACTOR * ef))

    def _params(self, sel: Any, fraction: float, ef_search: int | None, nprobe: int | None) -> Any:
        import faiss

        if self.kind == "hnsw":
            p = faiss.SearchParametersHNSW()
            p.efSearch = self.filtered_ef(fraction if sel is not None else 1.0, ef_search)
        elif self.kind == "ivfpq":
            p = faiss.SearchParametersIVF()
            p.nprobe = int(min(nprobe or self.nprobe, self.params.get("nlist", 1)))
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        if self.kind == "ivfpq":
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = p
            outer._inner = p  # keep the Python object alive
            return outer
        return p

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of rows ``ids`` (M,), decoded from the index, (M, d) float32."""
        ids = np.ascontiguousarray(ids, np.int64)
        if self.kind == "ivfpq":
            _ensure_direct_map(self.index)
        return self.index.reconstruct_batch(ids)

    def _exact(self, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over rows ``ids``: (Q, k) similarities and row ids; ties to the lower row."""
        x = self.reconstruct(ids)  # (M, d)
        sims = q @ x.T  # (Q, M)
        if k < len(ids):
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (Q, k), unordered
        else:
            part = np.broadcast_to(np.arange(len(ids)), (len(q), len(ids)))
        top = np.take_along_axis(sims, part, 1)
        order = _order(top, part)
        return np.take_along_axis(top, order, 1).astype(np.float32), ids[np.take_along_axis(part, order, 1)]

    # ---------------------------------------------------------------- files
    def write(self, path: str | os.PathLike) -> None:
        """Write with ``faiss.write_index``, atomically (temporary file in the same folder, then rename)."""
        import faiss

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def read(cls, path: str | os.PathLike, mmap: bool = True) -> "AnnIndex":
        """Open an index written by :meth:`write`; ``mmap`` maps its storage instead of reading it.

        ``flat`` and ``hnsw`` storage (and the HNSW graph) are mapped with ``IO_FLAG_MMAP_IFC``;
        ``ivfpq`` inverted lists with ``IO_FLAG_MMAP``. Nothing is rebuilt or retrained.
        """
        import faiss

        p = Path(path)
        if not p.is_file():
            raise PixelNNError(f"no index file at {p}")
        flags = 0
        if mmap:
            with open(p, "rb") as f:
                ivf = f.read(4) in (b"IxPT", b"IwPQ", b"IwQR", b"IwFl", b"IwSq")  # IVF kinds (OPQ wraps IVF)
            flags = (faiss.IO_FLAG_MMAP if ivf else faiss.IO_FLAG_MMAP_IFC) | faiss.IO_FLAG_READ_ONLY
        try:
            index = faiss.read_index(str(p), flags)
        except RuntimeError as e:
            raise PixelNNError(f"not a faiss index: {p} ({str(e).splitlines()[0][:200]})") from None
        return cls._wrap(index)

    @property
    def mapped(self) -> bool:
        """True when the index's storage is memory-mapped from its file (not held in RAM)."""
        import faiss

        if self.kind == "ivfpq":
            lists = faiss.extract_index_ivf(self.index).invlists
            return isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)
        codes = self.index.codes if self.kind == "flat" else faiss.downcast_index(self.index.storage).codes
        return not codes.is_owned

    def to_bytes(self) -> bytes:
        """The index as bytes (``faiss.serialize_index``), for fsspec locations."""
        import faiss

        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "AnnIndex":
        """Inverse of :meth:`to_bytes` (the index is then held in RAM)."""
        import faiss

        try:
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
        except RuntimeError as e:
            raise PixelNNError(f"not a faiss index ({str(e).splitlines()[0][:200]})") from None
        return cls._wrap(index)

    @classmethod
    def _wrap(cls, index: Any) -> "AnnIndex":
        import faiss

        dim = int(index.d)
        if isinstance(index, faiss.IndexHNSW):
            return cls(index, "hnsw", dim, {"M": int(index.hnsw.nb_neighbors(1)),
                                            "ef_construction": int(index.hnsw.efConstruction)})
        if isinstance(index, faiss.IndexFlat):
            return cls(index, "flat", dim)
        if isinstance(index, faiss.IndexPreTransform):
            ivf = faiss.extract_index_ivf(index)
            pq = faiss.downcast_index(ivf).pq
            return cls(index, "ivfpq", dim, {"nlist": int(ivf.nlist), "pq_m": int(pq.M), "pq_nbits": int(pq.nbits)})
        raise PixelNNError(f"unsupported faiss index type {type(index).__name__}; valid kinds: "
                           f"{', '.join(INDEX_KINDS)}")


def _order(top: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row, the order sorting ``top`` decreasing, ties by ``ids`` increasing, (Q, k) int64."""
    return np.stack([np.lexsort((i, -t)) for t, i in zip(top, ids)]) if len(top) else np.zeros((0, 0), np.int64)


def _ensure_direct_map(index: Any) -> None:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    if ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    yield first
    yield from rest
