"""The exemplar-store contract: what stage 2 needs from a library of exemplars, and nothing more.

Stage 2 reads exemplars only through these members, so a store can keep its arrays anywhere
(memory-mapped shards, a chunked store on disk or on a cluster) as long as it answers them.
:class:`pixelnn.library.ExemplarLibrary` is the store on disk; :class:`ArrayStore` keeps a few
arrays in memory (tests, small experiments) and is the exact reference the others are tested
against.

Positions 0..len-1 number the exemplars; every member that takes ``positions`` returns its rows in
the order given (repeats allowed).

========================== =========================================================================
member                     returns
========================== =========================================================================
``len(store)``             number of exemplars N
``take(field, positions)`` rows of ``photos`` (M, S, S, 3) uint8, ``stage1`` (M, S, S, 3) uint8,
                           ``inputs`` (M, s, s, C) uint8 or ``global`` (M, D) float32
``ids_of(positions)``      their exemplar ids (list of str)
``records_of(positions)``  their records ``{"id", "source", "labels", ...}``
``position(id)``           the position of an id (one-line PixelNNError if unknown)
``select(where, ids)``     sorted positions matching label constraints and/or ids
``search(desc, k, allowed)`` ``(D, I)``: similarities (Q, k) float32 and positions (Q, k) int64
                           (``-inf`` / ``-1`` where fewer than k are allowed), the FAISS contract
========================== =========================================================================
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from pixelnn.errors import PixelNNError

#: The array fields of an exemplar.
FIELDS = ("photos", "stage1", "inputs", "global")


@runtime_checkable
class ExemplarStore(Protocol):
    """What stage 2 reads from a library; see the module docstring."""

    def __len__(self) -> int: ...

    def take(self, field: str, positions: Sequence[int] | np.ndarray) -> np.ndarray: ...

    def ids_of(self, positions: Sequence[int] | np.ndarray) -> list[str]: ...

    def records_of(self, positions: Sequence[int] | np.ndarray) -> list[dict[str, Any]]: ...

    def position(self, exemplar_id: str) -> int: ...

    def select(self, where: dict[str, Any] | None = None, ids: Sequence[str] | None = None) -> np.ndarray: ...

    def search(self, desc: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]: ...


def check_field(field: str) -> None:
    if field not in FIELDS:
        raise PixelNNError(f"invalid exemplar field {field!r}; valid: {', '.join(FIELDS)}")


def check_positions(positions: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Positions as an int64 array (M,), each in [0, n); a one-line PixelNNError otherwise."""
    pos = np.asarray(positions)
    if pos.size == 0:
        return np.zeros(0, np.int64)
    if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
        raise PixelNNError(f"positions must be a 1-D list of integers, got {pos.dtype}{list(pos.shape)}")
    pos = pos.astype(np.int64, copy=False)
    bad = pos[(pos < 0) | (pos >= n)]
    if len(bad):
        raise PixelNNError(f"position {int(bad[0])} is out of range; the store has {n} exemplars")
    return pos


def iter_field(store: ExemplarStore, field: str, batch_size: int = 256) -> Iterator[np.ndarray]:
    """All rows of a field, ``batch_size`` at a time in position order (never the whole field at once)."""
    n = len(store)
    for start in range(0, n, batch_size):
        yield store.take(field, np.arange(start, min(start + batch_size, n)))


def few(items: Iterable[Any], n: int = 5) -> str:
    """The first ``n`` items as text, with the total when there are more (for error messages)."""
    items = list(items)
    text = ", ".join(repr(x) for x in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")


def labels_index(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{label key: {value: count}}`` over records (values as str, most frequent first)."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        for k, v in (r.get("labels") or {}).items():
            d = counts.setdefault(str(k), {})
            d[str(v)] = d.get(str(v), 0) + 1
    return {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))) for k, v in sorted(counts.items())}


def check_where(where: dict[str, Any], index: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """Label constraints as ``{key: [values]}`` (a bare string is one value), checked against a store's
    :func:`labels_index`; unknown keys or values raise a one-line PixelNNError naming valid ones."""
    out = {}
    for key, values in where.items():
        if key not in index:
            raise PixelNNError(f"unknown label key {key!r}; valid: {', '.join(index) or '(none)'}")
        values = [values] if isinstance(values, str) else [str(v) for v in values]
        if not values:
            raise PixelNNError(f"no values given for label {key!r}; e.g. {few(index[key], 5)}")
        unknown = [v for v in values if v not in index[key]]
        if unknown:
            raise PixelNNError(f"unknown {key} value(s) {few(unknown, 3)}; valid include {few(index[key], 5)}")
        out[key] = values
    return out


def select_records(records: Sequence[dict[str, Any]], position_of: dict[str, int],
                   where: dict[str, Any] | None = None, ids: Sequence[str] | None = None) -> np.ndarray:
    """:meth:`ExemplarStore.select` over a list of records: AND across label keys, OR within a key's values.

    Unknown keys, values or ids raise a one-line PixelNNError naming valid ones.
    """
    n = len(records)
    mask = np.ones(n, bool)
    if where:
        for key, values in check_where(where, labels_index(records)).items():
            wanted = set(values)
            mask &= np.array([key in (r.get("labels") or {}) and str(r["labels"][key]) in wanted for r in records],
                             bool)
    if ids is not None:
        ids = [ids] if isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i not in position_of]
        if unknown:
            raise PixelNNError(f"{len(unknown)} unknown exemplar id(s): {few(unknown, 3)}; the store has {n}, "
                               f"e.g. {few([r['id'] for r in records[:3]], 3)}")
        m = np.zeros(n, bool)
        m[[position_of[i] for i in ids]] = True
        mask &= m
    return np.flatnonzero(mask).astype(np.int64)


class ArrayStore:
    """An :class:`ExemplarStore` over in-memory arrays, with exact brute-force search.

    Parameters
    ----------
    photos, stage1 : ndarray, (N, S, S, 3) uint8
    global_desc : ndarray, (N, D) float32, optional
        Unit rows; needed by :meth:`search`.
    inputs : ndarray, (N, s, s, C) uint8, optional
    records : list of dict, optional
        Default ``{"id": "ex00000", ...}``.
    """

    def __init__(self, photos: np.ndarray, stage1: np.ndarray, global_desc: np.ndarray | None = None,
                 inputs: np.ndarray | None = None, records: Sequence[dict[str, Any]] | None = None):
        self._arrays = {"photos": np.asarray(photos), "stage1": np.asarray(stage1), "global": global_desc,
                        "inputs": inputs}
        n = len(self._arrays["photos"])
        self.records = list(records) if records is not None else [{"id": f"ex{i:05d}"} for i in range(n)]
        if len(self._arrays["stage1"]) != n or len(self.records) != n:
            raise PixelNNError("photos, stage1 and records must have one row per exemplar")
        self._pos = {r["id"]: i for i, r in enumerate(self.records)}

    def __len__(self) -> int:
        return len(self.records)

    def take(self, field: str, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        check_field(field)
        a = self._arrays[field]
        if a is None:
            raise PixelNNError(f"this store has no {field}")
        return np.asarray(a[check_positions(positions, len(self))])

    def ids_of(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        return [self.records[i]["id"] for i in check_positions(positions, len(self))]

    def records_of(self, positions: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        return [self.records[i] for i in check_positions(positions, len(self))]

    def position(self, exemplar_id: str) -> int:
        try:
            return self._pos[exemplar_id]
        except KeyError:
            raise PixelNNError(f"unknown exemplar id {exemplar_id!r}") from None

    def select(self, where: dict[str, Any] | None = None, ids: Sequence[str] | None = None) -> np.ndarray:
        return select_records(self.records, self._pos, where, ids)

    def search(self, desc: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search: (D, I), each (Q, k), ties to the lower position."""
        g = self._arrays["global"]
        if g is None:
            raise PixelNNError("this store has no global descriptors to search")
        desc = np.atleast_2d(np.asarray(desc, np.float32))
        cand = np.arange(len(self)) if allowed is None else np.asarray(allowed, np.int64)
        sims = desc @ np.asarray(g, np.float32)[cand].T  # (Q, M)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        D = np.full((len(desc), k), -np.inf, np.float32)
        I = np.full((len(desc), k), -1, np.int64)
        m = order.shape[1]
        D[:, :m] = np.take_along_axis(sims, order, 1)
        I[:, :m] = cand[order]
        return D, I
