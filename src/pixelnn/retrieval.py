"""Global retrieval: conv5 descriptors of whole images and a faiss index over them.

PixelNN first finds the K global nearest neighbours of a stage-1 output f(x) among the stage-1
outputs f(x_n) of the training pairs, using conv-5 features (paper, section 3, "Efficient
search"); pixel-wise matching then runs only inside those K exemplars.

Descriptor
----------
:func:`global_descriptors` runs the ImageNet AlexNet trunk of :mod:`pixelnn.models.alexnet` on
the images at their own resolution (no resizing), takes conv5 after its ReLU (``relu5``),
flattens it channel-major (C, H, W) and L2-normalises each row, as the PixelNN authors' code
does. Its size D = 256 * h * h with h the conv5 side (:func:`descriptor_dim`):

====== ===== ==========
S      h     D
====== ===== ==========
32     1     256
64     3     2304
96     5     6400
128    7     12544
====== ===== ==========

Images need at least 31 pixels a side (conv5 must be at least 1x1). The inner product of two
descriptors is their cosine similarity, in [0, 1] since ReLU makes them non-negative (an image
whose conv5 is all zero gets a zero descriptor, with similarity 0 to everything).

Index
-----
:class:`GlobalIndex` follows the faiss contract ``search(x, k) -> (D, I)`` with D the
inner-product similarities (largest first) and I the int64 positions of the added vectors, and
adds subset search (``allowed=``), position removal, and padding: when fewer than k vectors are
available, the missing columns hold ``I = -1`` and ``D = -inf``.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np

from pixelnn.errors import PixelNNError

log = logging.getLogger(__name__)

#: Name of the descriptor, recorded in libraries so that stale ones are refused.
DESCRIPTOR_NAME = "alexnet-relu5-l2"
#: AlexNet layer used (conv5 after its ReLU).
DESCRIPTOR_LAYER = "relu5"
#: Channels of conv5.
CONV5_CHANNELS = 256
#: Smallest image side for which conv5 is at least 1x1.
MIN_IMAGE_SIZE = 31

#: Valid index kinds.
INDEX_KINDS = ("flat", "ivf")


# --------------------------------------------------------------------------------------- descriptors
def conv5_side(size: int) -> int:
    """Side of AlexNet's conv5 map for a ``size`` x ``size`` image (0 when it is too small).

    conv1 11x11/4 pad 2, pool1 3x3/2, conv2 pad 2, pool2 3x3/2, then 3x3 pad 1 convolutions.
    """
    c1 = (size + 4 - 11) // 4 + 1
    p1 = (c1 - 3) // 2 + 1 if c1 >= 3 else 0
    p2 = (p1 - 3) // 2 + 1 if p1 >= 3 else 0
    return max(p2, 0)


def descriptor_dim(size: int) -> int:
    """D = 256 * h * h, the global descriptor size for ``size`` x ``size`` images (6400 for 96)."""
    h = conv5_side(size)
    if h < 1:
        raise PixelNNError(f"images of {size}x{size} are too small for the conv5 descriptor; "
                           f"need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    return CONV5_CHANNELS * h * h


@functools.lru_cache(maxsize=4)
def _descriptor_model(device: str = "cpu"):
    """The pretrained AlexNet trunk on ``device``, loaded once per process and device, frozen, in eval mode."""
    from pixelnn.models.alexnet import alexnet

    model = alexnet(pretrained=True)
    model.requires_grad_(False)
    return model.eval().to(device)


def global_descriptors(images: np.ndarray, batch_size: int = 64, progress: bool = False,
                       device: Any = "cpu") -> np.ndarray:
    """conv5 (after ReLU) AlexNet descriptors of whole images, flattened and L2-normalised.

    Parameters
    ----------
    images : ndarray, (N, S, S, 3) uint8
        Images (a memory map is fine: it is read ``batch_size`` rows at a time). S >= 31.
    batch_size : int
        Images per forward pass.
    progress : bool
        Show a tqdm progress bar.
    device : str or torch.device
        Where AlexNet runs (the descriptors come back as numpy on the CPU).

    Returns
    -------
    ndarray, (N, D) float32
        Unit-norm rows (zero rows stay zero); D = :func:`descriptor_dim` (S) = 6400 for S = 96.
        The inner product of two rows is the cosine similarity of the images' conv5 maps.
    """
    import torch
    from tqdm.auto import tqdm

    from pixelnn.models.alexnet import imagenet_normalize

    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise PixelNNError(f"global_descriptors expects (N, S, S, 3) images, got shape {tuple(images.shape)}")
    if images.dtype != np.uint8:
        raise PixelNNError(f"global_descriptors expects uint8 images, got {images.dtype}")
    n, size = len(images), images.shape[1]
    dim = descriptor_dim(size)
    out = np.empty((n, dim), np.float32)
    if n == 0:
        return out
    model = _descriptor_model(str(device))
    with torch.inference_mode(), tqdm(total=n, desc="global descriptors", unit="img", disable=not progress,
                                      leave=False) as bar:
        for i in range(0, n, batch_size):
            x = imagenet_normalize(np.array(images[i:i + batch_size])).to(device)  # (B, 3, S, S); copied: read-only maps
            feat = model(x, layers=(DESCRIPTOR_LAYER,))[DESCRIPTOR_LAYER]  # (B, 256, h, h)
            feat = feat.flatten(1)  # (B, D), channel-major
            feat = feat / feat.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out[i:i + len(feat)] = feat.cpu().numpy()
            bar.update(len(feat))
    return out


# ------------------------------------------------------------------------------ input descriptors
#: Input-aware retrieval (issue 16, part 4): the share of the input's own similarity, by task, when
#: ``SynthesisOptions.input_weight`` is None (measured on the val splits, docs/results.md).
DEFAULT_INPUT_WEIGHT = {"superres": 0.0, "edges": 0.6, "normals": 0.0, "paired": 0.0}
#: Side of the grid an input descriptor samples (the input is blurred, then area-averaged to it).
INPUT_GRID = 24


def pool_and_blur(values: np.ndarray, grid: int) -> np.ndarray:
    """Box-pool (N, s, s, C) float maps to ``grid`` x ``grid`` (``grid`` must divide ``s``), then blur them by a
    3x3 binomial kernel with edge padding, so that features a few pixels apart still overlap: (N, grid, grid, C).
    The spatial step of :func:`input_descriptors`."""
    n, s, _, c = values.shape
    f = s // grid
    v = values.reshape(n, grid, f, grid, f, c).mean(axis=(2, 4))  # (N, g, g, C)
    pad = np.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    k = np.array([0.25, 0.5, 0.25], np.float32)
    v = sum(k[i] * pad[:, i:i + grid] for i in range(3))  # vertical binomial
    return sum(k[j] * v[:, :, j:j + grid] for j in range(3))  # horizontal


def input_descriptors(inputs: np.ndarray, grid: int = INPUT_GRID) -> np.ndarray:
    """Descriptors of task inputs x for input-aware retrieval: blurred, pooled, centred, unit-norm.

    A one-channel input (an edge map: dark strokes on white) becomes its ink density ``1 - x / 255``; any
    other input (a thumbnail, a normal map, an RGB edge map) its values centred per image and channel. The
    choice depends on the channel count alone, so a query and its candidates are always described alike.
    Each channel is box-pooled to ``grid`` x ``grid`` (``grid`` divides the side, else the side itself
    is used) and blurred by a 3x3 binomial kernel, so that strokes a few pixels apart still overlap;
    the rows are L2-normalised, so an inner product is a cosine in [-1, 1] (a blank input gets a zero row).

    Parameters
    ----------
    inputs : ndarray, (N, s, s, C) uint8
    grid : int

    Returns
    -------
    ndarray, (N, g * g * C) float32
        ``g`` = ``grid`` when it divides ``s``, else ``s``.
    """
    x = np.asarray(inputs)
    if x.ndim != 4 or x.dtype != np.uint8 or x.shape[1] != x.shape[2]:
        raise PixelNNError(f"input_descriptors expects (N, s, s, C) uint8 inputs, got {x.shape} {x.dtype}")
    n, s, _, c = x.shape
    g = grid if s % grid == 0 else s
    if n == 0:
        return np.zeros((0, g * g * c), np.float32)
    v = x.astype(np.float32) / 255.0
    if c == 1:
        v = 1.0 - v  # ink density (N, s, s, 1)
    else:
        v = v - v.mean(axis=(1, 2), keepdims=True)  # (N, s, s, C), centred per image and channel
    d = pool_and_blur(v, g).reshape(n, -1).astype(np.float32)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return np.where(norm > 1e-12, d / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def rerank(sim: np.ndarray, idx: np.ndarray, x_desc: np.ndarray, cand_desc: np.ndarray, weight: float,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank one query's candidates by ``(1 - weight) * sim + weight * (cand_desc @ x_desc)``.

    Parameters
    ----------
    sim, idx : ndarray, (M,)
        The candidates' f(x) similarities and positions, from a search (padding ``idx == -1`` is dropped).
    x_desc : ndarray, (D,)
        The query input's :func:`input_descriptors` row.
    cand_desc : ndarray, (M', D)
        The non-padded candidates' input descriptors, in order.
    weight : float
        In [0, 1].
    k : int

    Returns
    -------
    (D, I) : ndarray (k,) float32, ndarray (k,) int64
        The combined similarities (largest first; a stable sort keeps the search's order on ties) and the
        positions, padded with -inf / -1 as :meth:`GlobalIndex.search` pads.
    """
    found = np.asarray(idx) >= 0
    s, i = np.asarray(sim, np.float64)[found], np.asarray(idx, np.int64)[found]
    combined = (1.0 - weight) * s + weight * (np.asarray(cand_desc, np.float64) @ np.asarray(x_desc, np.float64))
    order = np.argsort(-combined, kind="stable")[:k]
    out_d = np.full(k, -np.inf, np.float32)
    out_i = np.full(k, -1, np.int64)
    out_d[:len(order)], out_i[:len(order)] = combined[order], i[order]
    return out_d, out_i


def diverse_subset(relevance: np.ndarray, redundancy: np.ndarray, weight: float, k: int) -> np.ndarray:
    """Greedy maximal marginal relevance (Carbonell & Goldstein, 1998): ``k`` rows, relevant but unlike each other.

    The first pick is the most relevant row; each next one maximises
    ``(1 - weight) * relevance[i] - weight * max over picked j of redundancy[i, j]``. Ties go to the earlier
    row, so ``weight = 0`` keeps the order of a stable sort by relevance.

    Parameters
    ----------
    relevance : ndarray, (M,)
        Larger is better (a similarity to the query).
    redundancy : ndarray, (M, M)
        Similarity between the rows (symmetric; the diagonal is not used).
    weight : float
        In [0, 1]: 0 ranks by relevance alone.
    k : int

    Returns
    -------
    ndarray, (min(k, M),) int64
        Row positions in the order picked.
    """
    rel = np.asarray(relevance, np.float64)
    red = np.asarray(redundancy, np.float64)
    m = len(rel)
    if red.shape != (m, m):
        raise PixelNNError(f"redundancy must be ({m}, {m}) for {m} rows, got {red.shape}")
    if not 0.0 <= weight <= 1.0:
        raise PixelNNError(f"diversity weight must be in [0, 1], got {weight}")
    picked: list[int] = []
    closest = np.full(m, -np.inf)  # (M,) max redundancy to the rows picked so far
    free = np.ones(m, bool)
    for _ in range(min(k, m)):
        gain = (1.0 - weight) * rel - weight * (closest if picked else 0.0)
        gain = np.where(free, gain, -np.inf)
        i = int(np.argmax(gain))  # the first of equal gains
        picked.append(i)
        free[i] = False
        closest = np.maximum(closest, red[:, i])
    return np.asarray(picked, np.int64)


# --------------------------------------------------------------------------------------------- index
def _as_queries(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise PixelNNError(f"queries must be (Q, {dim}), got shape {tuple(x.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32)


class GlobalIndex:
    """Inner-product nearest-neighbour index over descriptors, with subset search.

    Parameters
    ----------
    dim : int
        Descriptor size D.
    kind : {'flat', 'ivf'}
        ``flat``: exact search (faiss ``IndexFlatIP``), the default. ``ivf``: ``IndexIVFFlat`` over
        inner product, approximate, for millions of vectors; it is trained (k-means) on the first
        vectors added.
    nlist : int, optional
        IVF cells; default ``round(4 * sqrt(N))`` for the first N vectors added, capped at N.
    nprobe : int, optional
        IVF cells visited per query; default ``min(nlist, 16)``. ``nprobe == nlist`` is exact.

    Notes
    -----
    Memory: ``flat`` holds the vectors once, inside faiss (N x D x 4 bytes; 460 MB for 18k
    6400-d descriptors); ``ivf`` also keeps a numpy copy so that :meth:`remove` can re-add the
    rest. Positions are 0..len-1 in the order vectors were added; :meth:`remove` renumbers the
    rest like ``np.delete``.
    Searches use faiss's OpenMP threads (``faiss.omp_set_num_threads`` to limit them).
    """

    def __init__(self, dim: int, kind: str = "flat", nlist: int | None = None, nprobe: int | None = None):
        if kind not in INDEX_KINDS:
            raise PixelNNError(f"invalid index kind {kind!r}; valid: {', '.join(INDEX_KINDS)}")
        if dim < 1:
            raise PixelNNError(f"descriptor size must be positive, got {dim}")
        self.dim, self.kind = int(dim), kind
        self.nlist, self.nprobe = nlist, nprobe
        self._x = np.zeros((0, self.dim), np.float32)  # ivf only: the vectors, for re-adding after remove
        self._index: Any = None  # faiss index, built on the first add (ivf: the first non-empty one)
        if kind == "flat":
            self._index = self._new_faiss_index(self._x)

    @classmethod
    def from_vectors(cls, x: np.ndarray, kind: str = "flat", **options: Any) -> "GlobalIndex":
        """Build an index holding ``x`` (N, D) float32 (rows L2-normalised for cosine)."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise PixelNNError(f"vectors must be (N, D), got shape {tuple(x.shape)}")
        index = cls(x.shape[1], kind, **options)
        index.add(x)
        return index

    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, nprobe={self._nprobe()}" if self.kind == "ivf" else ""
        return f"GlobalIndex(n={len(self)}, dim={self.dim}, kind={self.kind!r}{extra})"

    def vectors(self) -> np.ndarray:
        """A copy of the stored vectors, (N, D) float32, in position order."""
        return np.array(self._view())

    def _view(self) -> np.ndarray:
        """The stored vectors without copying (for flat, faiss's own buffer: invalid after add/remove)."""
        if self.kind == "flat":
            import faiss

            n = len(self)
            if n == 0:
                return np.zeros((0, self.dim), np.float32)
            v = faiss.rev_swig_ptr(self._index.get_xb(), n * self.dim).reshape(n, self.dim)
        else:
            v = self._x.view()
        v.flags.writeable = False
        return v

    # ------------------------------------------------------------------ building
    def _new_faiss_index(self, train_on: np.ndarray) -> Any:
        import faiss

        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        n = len(train_on)
        if n == 0:
            return None  # trained on the first non-empty add
        if self.nlist is None:
            self.nlist = int(max(1, min(n, round(4 * math.sqrt(n)))))
        if self.nlist > n:
            raise PixelNNError(f"ivf index needs at least nlist={self.nlist} vectors to train, got {n}")
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        if n < 39 * self.nlist:
            log.info("training ivf on %d vectors for %d cells (faiss suggests >= %d)", n, self.nlist, 39 * self.nlist)
        index.train(train_on)
        return index

    def train(self, x: np.ndarray) -> None:
        """Train an IVF index's cells on ``x`` (M, D) before the first :meth:`add` (flat: nothing to train).

        Without it, the first non-empty :meth:`add` trains on its own vectors.
        """
        if self._index is None:
            self._index = self._new_faiss_index(_as_queries(x, self.dim))

    def add(self, x: np.ndarray) -> None:
        """Append vectors ``x`` (M, D) float32; they get positions len..len+M-1."""
        x = _as_queries(x, self.dim)
        if len(x) == 0:
            return
        if self._index is None:
            self._index = self._new_faiss_index(x)
        self._index.add(x)
        if self.kind == "ivf":
            self._x = np.concatenate([self._x, x]) if len(self._x) else x.copy()

    def remove(self, positions: np.ndarray | list[int]) -> None:
        """Delete the vectors at ``positions`` (ints or a bool mask) and renumber the rest like ``np.delete``.

        ``flat`` removes in place; ``ivf`` re-adds the remaining vectors (keeping its training).
        """
        import faiss

        positions = self._check_positions(positions)
        if len(positions) == 0:
            return
        if self.kind == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(positions))
        else:
            self._x = np.delete(self._x, positions, axis=0)
            self._index.reset()
            if len(self._x):
                self._index.add(self._x)

    def _check_positions(self, positions: Any) -> np.ndarray:
        p = np.asarray(positions)
        if p.dtype == bool:
            if p.shape != (len(self),):
                raise PixelNNError(f"a boolean mask of positions must have length {len(self)}, got {p.shape}")
            return np.flatnonzero(p).astype(np.int64)
        if p.size and not np.issubdtype(p.dtype, np.integer):
            raise PixelNNError(f"positions must be integers, got {p.dtype}")
        p = np.unique(p.astype(np.int64).ravel())
        if len(p) and (p[0] < 0 or p[-1] >= len(self)):
            bad = p[(p < 0) | (p >= len(self))][:5].tolist()
            raise PixelNNError(f"positions out of range 0..{len(self) - 1}: {bad}")
        return p

    # ------------------------------------------------------------------ searching
    def _nprobe(self) -> int | None:
        if self.kind != "ivf" or self.nlist is None:
            return None
        return int(min(self.nprobe or 16, self.nlist))

    def search(self, x: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar stored vectors of each query.

        Parameters
        ----------
        x : ndarray, (Q, D) float32
            Queries (a single (D,) vector is taken as Q = 1).
        k : int
            Neighbours per query (>= 1).
        allowed : ndarray of int positions, or bool mask (N,), optional
            Only return these positions (faiss ``IDSelectorBatch`` in the search parameters: exact for
            ``flat``, where only the allowed vectors are compared, so a small subset is also faster).

        Returns
        -------
        D : ndarray, (Q, k) float32
            Inner products (cosine similarities for unit rows), in decreasing order.
        I : ndarray, (Q, k) int64
            Positions of the neighbours. When fewer than k vectors are available (in the index or in
            ``allowed``), the trailing columns hold ``I = -1`` and ``D = -inf``.
        """
        x = _as_queries(x, self.dim)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise PixelNNError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        q = len(x)
        dist = np.full((q, k), -np.inf, np.float32)
        ids = np.full((q, k), -1, np.int64)
        if q == 0 or len(self) == 0:
            return dist, ids
        if allowed is None:
            d, i = self._faiss_search(x, k, None)
        else:
            subset = self._check_positions(allowed)
            if len(subset) == 0:
                return dist, ids
            d, i = self._faiss_search(x, k, subset)
        m = d.shape[1]
        dist[:, :m], ids[:, :m] = d, i
        dist[ids < 0] = -np.inf
        ids[ids < 0] = -1
        return dist, ids

    def _faiss_search(self, x: np.ndarray, k: int, subset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = None
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = self._nprobe()
        elif subset is not None:
            params = faiss.SearchParameters()
        if subset is not None:
            sel = faiss.IDSelectorBatch(subset)
            params.sel = sel
        kk = min(k, len(self) if subset is None else len(subset))
        d, i = self._index.search(x, kk, params=params)
        return d, i

