"""The chunked exemplar store: Zarr v3 arrays and Parquet records at any fsspec URL, in versions.

:class:`ZarrLibrary` is the second :class:`pixelnn.store.ExemplarStore` and the default for new
libraries. It is built for millions of exemplars on one machine (and for builds on a cluster,
:mod:`pixelnn.engine`): opening reads no array, every read touches only the chunks asked for, and
every change is a new version that readers pick up whole or not at all. Layout (docs/scale.md)::

    URL/
      store.json                  identity, written once: format, version, task, image size, descriptor
      model/regressor.safetensors the stage-1 weights the library was built with
      global/reducer.safetensors  PCA of the conv5 descriptors (absent when they are stored in full)
      segments/<name>/            one Zarr v3 group per block of exemplars, immutable once committed
          photos (n, S, S, 3) uint8, stage1 (n, S, S, 3) uint8, inputs (n, s, s, C) uint8,
          global (n, d) float16 (float32 when unreduced), records.parquet, segment.json
      index/<version>.faiss       the global index over every row of that version
      versions/<number>.json      one file per commit; readers open the highest

Arrays use Zarr's sharding codec (a shard file holds :data:`SHARD_ROWS` exemplars, each exemplar
its own zstd-compressed inner chunk, so reading one exemplar reads one chunk) and a crc32c
checksum on every chunk and shard index. Records are Parquet columns (``id``, ``source``,
``dataset``, ``split``, ``dataset_id`` and one ``label.<key>`` column per label key), kept as Arrow
columns in memory, never one Python dict per exemplar.

**Rows** number every row of a version's segments in order (removed rows included): the index is
over rows. **Positions** number the live rows 0..len-1, as the store contract says.

**Commits.** New segments are written under a temporary name and renamed, the new index file is
written, and only then the next ``versions/N.json`` is created (exclusively). Nothing a version
lists is modified afterwards, so a reader that opened version N keeps reading version N while a
writer commits N+1, and a build killed midway leaves version N readable (its half-written segments
are orphans, removed by the next writer). One writer at a time: on a local folder every change holds
:func:`pixelnn.io.writer_lock` (a second writer waits, then plans on the newest version; object stores
have no lock). :meth:`ZarrLibrary.compact` is the
exception: it deletes the segments it replaces, so readers of older versions get a one-line error.

**Building** goes in blocks so that any engine can run it (:func:`plan_build`, :func:`write_block`,
:func:`commit_build`): the plan fixes the blocks, the segment names and the descriptor reduction,
so a local build and a Ray build write bit-identical segments.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import io
import json
import logging
import os
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from pixelnn.config import TaskConfig
from pixelnn.errors import PixelNNError
from pixelnn.io import (check_replaceable, config_from, crash_point, need, recover, recover_all, replace_dir, temp_prefix,
                        writer_lock)
from pixelnn.store import check_field, check_positions, check_where, few

log = logging.getLogger(__name__)

FORMAT_NAME = "pixelnn-store"
FORMAT_VERSION = 1
STORE_JSON = "store.json"
MODEL_FILE = "model/regressor.safetensors"
REDUCER_FILE = "global/reducer.safetensors"
SEGMENTS = "segments"
VERSIONS = "versions"
INDEX_DIR = "index"
SEGMENT_JSON = "segment.json"
#: In the staging folder of a new build: the plan, so that re-running an interrupted build resumes it.
PLAN_JSON = "plan.json"
RECORDS = "records.parquet"
#: Exemplars per shard file (per array).
SHARD_ROWS = 4096
#: Rows per inner chunk of the global descriptors (1 for the images).
GLOBAL_CHUNK_ROWS = 256
#: Default exemplars per build block (one segment each).
BLOCK_SIZE = 16384
#: Default reduced size of the conv5 descriptors.
GLOBAL_DIMS = 512
#: The descriptor reduction is fitted on at most this many evenly spaced exemplars.
REDUCER_FIT_MAX = 4096
#: Rows per forward pass while building (as the version-1 library, so stage-1 outputs agree).
CHUNK = 256
#: Quantizer-trained indexes (ivfpq) are trained on at most this many evenly spaced rows.
INDEX_TRAIN_MAX = 100_000
#: Default RAM the index may use (it chooses its kind by size and this budget).
INDEX_MEMORY = 2 * 2**30
IMAGE_FIELDS = ("photos", "stage1", "inputs")
#: Rows of each image field that :meth:`ZarrLibrary.take` keeps once read (least recently used dropped first):
#: a result's neighbours are read for composition and again when it is saved, and the web app's repeated
#: queries meet the same neighbours. A row is one zstd chunk of zarr's sharding codec, ~3 ms to read and
#: decode; 512 rows of 96x96 RGB are 14 MB per field. 0 keeps none. A version's rows never change, so a
#: kept row is never stale.
ROW_CACHE_ROWS = 512
_RECORD_COLUMNS = ("id", "source", "dataset", "split", "dataset_id")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- location
class Location:
    """A folder at an fsspec URL (a local path, ``memory://``, ``s3://``...) with atomic writes.

    Local folders write a temporary file and ``os.replace`` it; object stores write each object in one
    request (atomic per object). ``create_exclusive`` refuses to replace an existing file.
    """

    def __init__(self, url: str | os.PathLike):
        import fsspec

        self.url = str(url)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ValueError, ImportError) as e:
            raise PixelNNError(f"cannot use the store URL {self.url!r}: {e}") from None
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def child_url(self, rel: str) -> str:
        if self.local:
            return self.path(rel)
        return self.fs.unstrip_protocol(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise PixelNNError(f"{self.url} is missing {rel}") from None
        except OSError as e:
            raise PixelNNError(f"cannot read {rel} in {self.url}: {e}") from None

    def read_json(self, rel: str, expect: type | tuple[type, ...] | None = dict) -> Any:
        """``rel`` parsed as JSON (an object by default), with one-line errors (:func:`pixelnn.io.parse_json`)."""
        from pixelnn.io import parse_json

        return parse_json(self.read_bytes(rel), f"{self.url.rstrip('/')}/{rel}", expect=expect)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file atomically (readers see the old or the new content)."""
        if self.local:
            from pixelnn.io import atomic_path

            with atomic_path(self.path(rel)) as tmp:
                tmp.write_bytes(data)
        else:
            self.fs.makedirs(self.path(rel).rpartition("/")[0], exist_ok=True)
            self.fs.pipe_file(self.path(rel), data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())

    def create_exclusive(self, rel: str, data: bytes) -> None:
        """Create ``rel`` with ``data``; a one-line PixelNNError if it exists (another writer got there first)."""
        if self.local:
            import tempfile

            final = Path(self.path(rel))
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(final), dir=final.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, final)  # atomic, and fails if final exists
            except FileExistsError:
                raise PixelNNError(f"{self.url}: {rel} was committed by another writer; reopen and retry") from None
            finally:
                os.unlink(tmp)
        else:
            if self.exists(rel):
                raise PixelNNError(f"{self.url}: {rel} was committed by another writer; reopen and retry")
            self.write_bytes(rel, data)

    def listdir(self, rel: str) -> list[str]:
        """Names inside a folder (empty when it does not exist)."""
        p = self.path(rel)
        if not self.fs.exists(p):
            return []
        return sorted(str(e).rstrip("/").rpartition("/")[2] for e in self.fs.ls(p, detail=False))

    def rename(self, src: str, dst: str) -> None:
        if self.local:
            os.rename(self.path(src), self.path(dst))
        else:
            self.fs.mv(self.path(src), self.path(dst), recursive=True)

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)

    def files(self, rel: str = "") -> dict[str, int]:
        """``{relative path: size}`` of every file under ``rel``."""
        base = self.path(rel)
        if not self.fs.exists(base):
            return {}
        out = {}
        for p, info in self.fs.find(base, detail=True).items():
            out[str(p)[len(self.root) + 1:]] = int(info.get("size") or 0)
        return out

    def zarr_store(self, rel: str, read_only: bool):
        import zarr

        if self.local:
            return zarr.storage.LocalStore(self.path(rel), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.child_url(rel), read_only=read_only)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_store(url: str | os.PathLike) -> bool:
    """Whether ``url`` holds a chunked store (a ``store.json``)."""
    try:
        return Location(url).exists(STORE_JSON)
    except PixelNNError:
        return False


# ------------------------------------------------------------------------------------------- reduction
def _reducer_module():
    from pixelnn import ann

    return ann


# ------------------------------------------------------------------------------------------- segments
def _codecs():
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=3), Crc32cCodec()]


def _image_filters(ndim: int) -> list:
    """Before zstd, uint8 images (rows, H, W, C) are made channel-planar and delta-coded along each row (a
    lossless PNG-style prediction): 23% smaller photos and 39% smaller stage-1 images of faces than zstd alone."""
    from zarr.codecs import TransposeCodec
    from zarr.codecs.numcodecs import Delta

    with _quiet_numcodecs():
        return [TransposeCodec(order=(0, ndim - 1, *range(1, ndim - 1))), Delta(dtype="uint8")]


def _indices(pos: Any) -> Any:
    """Row numbers as a pyarrow int64 array, built from their buffer: ``pa.array`` of a numpy array imports
    pandas (0.3 s of start-up) to check whether it is a pandas object."""
    import pyarrow as pa

    pos = np.ascontiguousarray(pos, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(pos), [None, pa.py_buffer(pos)])


@contextlib.contextmanager
def _quiet_numcodecs() -> Iterator[None]:
    """zarr warns that numcodecs' Delta is outside the v3 core spec (zarr-python with numcodecs reads it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")
        yield


class _SegmentWriter:
    """Writes one segment's arrays shard by shard (a full shard is buffered, never rewritten)."""

    def __init__(self, loc: Location, rel: str, n: int, size: int, input_shape: tuple[int, ...], dim: int,
                 global_dtype: str):
        import zarr

        self.loc, self.rel, self.n = loc, rel, n
        group = zarr.open_group(loc.zarr_store(rel, read_only=False), mode="w", zarr_format=3)
        shapes = {"photos": ((n, size, size, 3), "uint8", (1, size, size, 3)),
                  "stage1": ((n, size, size, 3), "uint8", (1, size, size, 3)),
                  "inputs": ((n, *input_shape), "uint8", (1, *input_shape)),
                  "global": ((n, dim), global_dtype, (GLOBAL_CHUNK_ROWS, dim))}
        self.arrays = {}
        for name, (shape, dtype, chunks) in shapes.items():
            inner = min(chunks[0], max(n, 1))  # (a shard holds whole inner chunks)
            shard = (min(SHARD_ROWS, -(-max(n, 1) // inner) * inner), *shape[1:])
            chunks = (inner, *chunks[1:])
            filters = _image_filters(len(shape)) if name in IMAGE_FIELDS else None
            with _quiet_numcodecs():
                self.arrays[name] = group.create_array(name, shape=shape, dtype=dtype, shards=shard, chunks=chunks,
                                                       filters=filters, compressors=_codecs(), fill_value=0)
        self.buffers = {k: [] for k in self.arrays}
        self.written = 0
        self.buffered = 0

    def append(self, rows: dict[str, np.ndarray]) -> None:
        m = len(rows["photos"])
        for k in self.arrays:
            self.buffers[k].append(np.asarray(rows[k]))
        self.buffered += m
        while self.buffered >= SHARD_ROWS or (self.buffered and self.written + self.buffered == self.n):
            self._flush(min(self.buffered, SHARD_ROWS))

    def _flush(self, m: int) -> None:
        for k, a in self.arrays.items():
            data = np.concatenate(self.buffers[k]) if len(self.buffers[k]) > 1 else self.buffers[k][0]
            a[self.written:self.written + m] = data[:m]
            self.buffers[k] = [data[m:]] if len(data) > m else []
        self.written += m
        self.buffered -= m


def _records_table(records: Sequence[dict[str, Any]]):
    """Records -> an Arrow table: the record columns plus one ``label.<key>`` string column per label key."""
    import pyarrow as pa

    cols: dict[str, list] = {c: [] for c in _RECORD_COLUMNS}
    keys = sorted({str(k) for r in records for k in (r.get("labels") or {})})
    labels = {k: [] for k in keys}
    for r in records:
        for c in _RECORD_COLUMNS:
            v = r.get(c)
            cols[c].append(None if v is None else str(v))
        lab = r.get("labels") or {}
        for k in keys:
            v = lab.get(k)
            labels[k].append(None if v is None else str(v))
    arrays = {c: pa.array(v, pa.string()) for c, v in cols.items()}
    arrays.update({f"label.{k}": pa.array(v, pa.string()).dictionary_encode() for k, v in labels.items()})
    return pa.table(arrays)


def _table_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _segment_info(loc: Location, rel: str, name: str, count: int, extra: dict[str, Any]) -> dict[str, Any]:
    files = {}
    for path, size in sorted(loc.files(rel).items()):
        sub = path[len(rel) + 1:]
        if sub == SEGMENT_JSON:
            continue
        files[sub] = {"size": size, "sha256": _sha256(loc.read_bytes(path))}
    return {"name": name, "count": int(count), **extra, "files": files,
            "bytes": int(sum(f["size"] for f in files.values()))}


def write_segment(loc: Location, name: str, arrays: Iterable[dict[str, np.ndarray]], records: Sequence[dict],
                  size: int, input_shape: tuple[int, ...], dim: int, global_dtype: str,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the segment ``segments/<name>`` (under a temporary name, then renamed) and return its info.

    Parameters
    ----------
    arrays : iterable of dict
        Chunks ``{"photos", "stage1", "inputs", "global"}`` of consecutive rows, ``len(records)`` rows in all.
    records : list of dict
        The rows' records.

    If ``segments/<name>`` is already complete (a retried block), nothing is written and its info is
    returned: writing a segment is idempotent.
    """
    final = f"{SEGMENTS}/{name}"
    if loc.exists(f"{final}/{SEGMENT_JSON}"):
        return loc.read_json(f"{final}/{SEGMENT_JSON}")
    tmp = f"{SEGMENTS}/.tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        writer = _SegmentWriter(loc, tmp, len(records), size, input_shape, dim, global_dtype)
        for chunk in arrays:
            writer.append(chunk)
        if writer.written != len(records):
            raise PixelNNError(f"segment {name}: {writer.written} rows written, {len(records)} records")
        loc.write_bytes(f"{tmp}/{RECORDS}", _table_bytes(_records_table(records)))
        info = _segment_info(loc, tmp, name, len(records), extra or {})
        loc.write_json(f"{tmp}/{SEGMENT_JSON}", info)
        if loc.exists(final):  # an earlier attempt left an incomplete folder under the final name
            loc.remove(final)
        loc.rename(tmp, final)
    except BaseException:
        loc.remove(tmp)
        raise
    return info


class _ShardRows:
    """Rows of a local image array read straight from its shard files, as zarr reads them but ~10x faster.

    zarr-python reads one inner chunk (one exemplar) of a shard in about 3 ms of Python (its async codec
    pipeline); a neighbour set of 11 took 35-45 ms a field. The arrays :class:`_SegmentWriter` writes have one
    fixed codec chain (sharding, index at the end with crc32c; inner chunks of one row: transpose, numcodecs
    delta of uint8, bytes, zstd, crc32c), so this reads a shard's index once, then each row's bytes: checks
    its crc32c, decompresses with numcodecs' zstd (zarr's own), undoes the delta (a cumulative sum in uint8)
    and the transpose. :meth:`of` returns None for any other array (remote stores, other codecs, dtypes or
    chunk shapes), which zarr then reads. ``tests/test_zarr_store.py`` compares both readers on every field.
    """

    def __init__(self, path: str, shape: tuple[int, ...], shard_rows: int, order: tuple[int, ...] | None,
                 delta: bool):
        from numcodecs import Zstd

        self.path, self.shard_rows = path, shard_rows
        self.order, self.delta = order, delta
        self.row_shape = shape[1:]
        self.encoded_shape = (1, *self.row_shape) if order is None else \
            tuple((1, *self.row_shape)[i] for i in order)
        self._zstd = Zstd()
        self._index: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, metadata: bytes, loc: "Location", rel: str) -> "_ShardRows | None":
        """A fast reader of the array whose ``zarr.json`` is ``metadata``, at ``loc``/``rel``, or None where zarr
        must read it (any metadata but the codec chain :class:`_SegmentWriter` writes, or a remote store)."""
        try:
            m = json.loads(metadata)
            shape = tuple(int(v) for v in m["shape"])
            grid, keys = m["chunk_grid"], m["chunk_key_encoding"]
            (shard,) = m["codecs"]
            conf = shard["configuration"]
            inner = list(conf["codecs"])
            order = None
            if inner and inner[0]["name"] == "transpose":
                order = tuple(int(i) for i in inner.pop(0)["configuration"]["order"])
            delta = bool(inner) and inner[0]["name"] == "numcodecs.delta" and \
                inner[0].get("configuration", {}).get("dtype") == "uint8" and \
                inner[0]["configuration"].get("astype", "uint8") == "uint8"
            if delta:
                inner.pop(0)
            ok = (loc.local and m.get("zarr_format") == 3 and m.get("node_type") == "array"
                  and m["data_type"] == "uint8" and m.get("fill_value") == 0
                  and not m.get("storage_transformers") and len(shape) >= 2
                  and grid["name"] == "regular" and tuple(grid["configuration"]["chunk_shape"][1:]) == shape[1:]
                  and keys["name"] == "default" and keys.get("configuration", {}).get("separator") == "/"
                  and shard["name"] == "sharding_indexed" and tuple(conf["chunk_shape"]) == (1, *shape[1:])
                  and conf.get("index_location", "end") == "end"
                  and [c["name"] for c in inner] == ["bytes", "zstd", "crc32c"]
                  and [c["name"] for c in conf["index_codecs"]] == ["bytes", "crc32c"]
                  and conf["index_codecs"][0].get("configuration", {}).get("endian") == "little"
                  and (order is None or sorted(order) == list(range(len(shape)))))
            if not ok:
                return None
            return cls(loc.path(rel), shape, int(grid["configuration"]["chunk_shape"][0]), order, delta)
        except (ValueError, KeyError, TypeError, AttributeError):  # other metadata: let zarr read it
            return None

    def _shard_index(self, f: Any, shard: int) -> np.ndarray:
        ix = self._index.get(shard)
        if ix is None:
            size = self.shard_rows * 16 + 4  # (offset, nbytes) uint64 per inner chunk, then crc32c
            f.seek(-size, os.SEEK_END)
            raw = f.read(size)
            if len(raw) != size or not _crc_ok(raw):
                raise PixelNNError(f"shard {shard}: bad shard index (checksum mismatch?)")
            ix = np.frombuffer(raw[:-4], "<u8").reshape(-1, 2)
            with self._lock:
                self._index[shard] = ix
        return ix

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows (local row numbers) -> (len(rows), *row shape) uint8."""
        out = np.empty((len(rows), *self.row_shape), np.uint8)
        inverse = None if self.order is None else tuple(int(i) for i in np.argsort(self.order))
        shards = np.asarray(rows) // self.shard_rows
        for shard in np.unique(shards):
            at = np.flatnonzero(shards == shard)
            path = f"{self.path}/c/{int(shard)}" + "/0" * len(self.row_shape)
            try:
                f = open(path, "rb")
            except FileNotFoundError:  # an empty shard: zarr's fill value
                out[at] = 0
                continue
            with f:
                ix = self._shard_index(f, int(shard))
                for i in at:
                    offset, nbytes = ix[int(rows[i]) % self.shard_rows]
                    if offset == nbytes == np.iinfo(np.uint64).max:  # an empty chunk
                        out[i] = 0
                        continue
                    f.seek(int(offset))
                    raw = f.read(int(nbytes))
                    if len(raw) != int(nbytes) or not _crc_ok(raw):
                        raise PixelNNError(f"row {int(rows[i])}: bad chunk (checksum mismatch?)")
                    flat = np.frombuffer(self._zstd.decode(raw[:-4]), np.uint8)
                    if self.delta:
                        flat = np.cumsum(flat, dtype=np.uint8)
                    chunk = flat.reshape(self.encoded_shape)
                    out[i] = (chunk if inverse is None else chunk.transpose(inverse))[0]
        return out


def _crc_ok(raw: bytes) -> bool:
    """Whether the last 4 bytes of ``raw`` are the crc32c of the rest (zarr's Crc32cCodec)."""
    import google_crc32c

    return np.uint32(google_crc32c.value(raw[:-4])).tobytes() == raw[-4:]


class _Segment:
    """One committed segment, opened lazily (its arrays on first read)."""

    def __init__(self, loc: Location, entry: dict[str, Any], source: str = "a version manifest"):
        from pixelnn.io import need

        self.loc, self.entry = loc, entry
        self.name = str(need(entry, "name", f"{source}: segment", str))
        where = f"{source}: segment {self.name}"
        self.count = int(need(entry, "count", where, int))
        need(entry, "files", where, dict)
        removed = entry.get("removed", [])
        if not isinstance(removed, list) or not all(isinstance(r, int) and 0 <= r < self.count for r in removed):
            raise PixelNNError(f"{where}: 'removed' should be a list of row numbers below {self.count}")
        self.removed = np.asarray(sorted(removed), np.int64)
        self._arrays: dict[str, Any] = {}
        self._fast: dict[str, Any] = {}  # field -> _ShardRows, or False where zarr itself reads
        self._metadata: dict[str, bytes] = {}

    def metadata(self, field: str) -> bytes:
        """The field's ``zarr.json``, after checking it and the group's against the version manifest (once)."""
        if field not in self._metadata:
            rel = f"{SEGMENTS}/{self.name}"
            for meta in ("zarr.json", f"{field}/zarr.json"):
                want = self.entry["files"].get(meta)
                data = self.loc.read_bytes(f"{rel}/{meta}") if want is not None else b""
                if want is None or _sha256(data) != want["sha256"]:
                    raise PixelNNError(f"{self.loc.url}: segment {self.name} has a bad checksum in {meta}")
            self._metadata[field] = data
        return self._metadata[field]

    def array(self, field: str):
        if field not in self._arrays:
            import zarr

            rel = f"{SEGMENTS}/{self.name}"
            self.metadata(field)
            try:
                with _quiet_numcodecs():
                    group = zarr.open_group(self.loc.zarr_store(rel, read_only=True), mode="r")
                    self._arrays[field] = group[field]
            except (KeyError, OSError, ValueError) as e:
                raise PixelNNError(f"{self.loc.url}: segment {self.name} is unreadable: {e}") from None
        return self._arrays[field]

    def read(self, field: str, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted, unique local row numbers) of a field."""
        fast = self._fast.get(field)
        if fast is None:  # from the checked zarr.json: the image fields never import zarr
            fast = self._fast[field] = _ShardRows.of(self.metadata(field), self.loc,
                                                     f"{SEGMENTS}/{self.name}/{field}") or False
        if fast and len(rows):
            try:
                return fast.read(rows)
            except PixelNNError as e:
                raise PixelNNError(f"{self.loc.url}: segment {self.name} {field}: {e}") from None
        a = self.array(field)
        try:
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
                return np.asarray(a[int(rows[0]):int(rows[-1]) + 1])
            return np.asarray(a.oindex[rows])
        except Exception as e:  # zarr raises its own errors for crc mismatches and bad chunks
            raise PixelNNError(f"{self.loc.url}: segment {self.name} {field}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else 'unreadable chunk'} (checksum mismatch?)") from None


# ------------------------------------------------------------------------------------------- library
class ZarrLibrary:
    """The chunked exemplar store (see the module docstring); open one with :meth:`open`.

    Parameters
    ----------
    url : str or path
        A local folder or any fsspec URL.
    version : int, optional
        Open this committed version (default: the newest).
    index_memory : int
        RAM in bytes the global index may use when it is (re)built by a commit.
    """

    def __init__(self, url: str | os.PathLike, version: int | None = None, index_memory: int = INDEX_MEMORY,
                 row_cache_rows: int = ROW_CACHE_ROWS):
        self.loc = Location(url)
        self.url = self.loc.url
        self.index_memory = int(index_memory)
        self.row_cache_rows = int(row_cache_rows)
        self._row_cache: dict[str, collections.OrderedDict[int, np.ndarray]] = {f: collections.OrderedDict()
                                                                                for f in IMAGE_FIELDS}
        self._row_lock = threading.Lock()  # web workers take rows concurrently
        self._load(version)

    @classmethod
    def open(cls, url: str | os.PathLike, version: int | None = None, **kwargs: Any) -> "ZarrLibrary":
        """Open a store (reads its manifests and records, no array); one-line PixelNNError if it is missing,
        newer than this code, uncommitted or corrupt."""
        return cls(url, version, **kwargs)

    # ------------------------------------------------------------------ opening
    def _load(self, version: int | None) -> None:
        loc = self.loc
        if loc.local:
            recover(loc.root)  # an `index --overwrite` killed between its two renames is undone here
        if not loc.exists(STORE_JSON):
            if loc.exists("library.json"):
                raise PixelNNError(f"{self.url} is a version-1 library; open it with pixelnn.zarr_store.open_library "
                                   f"or convert it with `pixelnn library upgrade {self.url} NEW`")
            raise PixelNNError(f"{self.url} is not a PixelNN store (no {STORE_JSON}); build one with "
                               f"`pixelnn index DATA_DIR --model MODEL_DIR --out {self.url}`")
        info = loc.read_json(STORE_JSON)
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise PixelNNError(f"{self.url}/{STORE_JSON} is not a {FORMAT_NAME} manifest")
        if not isinstance(info.get("version"), int) or info["version"] > FORMAT_VERSION:
            raise PixelNNError(f"{self.url} has store format version {info.get('version')!r}; this PixelNN reads up "
                               f"to {FORMAT_VERSION}: upgrade pixelnn")
        self.info = info
        src = f"{self.url.rstrip('/')}/{STORE_JSON}"
        try:
            self.task = config_from(TaskConfig, need(info, "task", src, dict), src, "task")
            self.image_size = int(need(info, "image_size", src, int))
            desc = need(info, "descriptor", src, dict)
            self.full_dim = int(need(desc, "dim", f"{src}: descriptor", int))
            self.dim = int(need(desc, "stored_dim", f"{src}: descriptor", int))
            need(desc, "stored_dtype", f"{src}: descriptor", str)
            need(info, "model", src, dict)
        except (KeyError, TypeError, ValueError) as e:
            raise PixelNNError(f"{self.url}/{STORE_JSON} is corrupt: missing or bad field {e}") from None
        numbers = committed_versions(loc)
        if not numbers:
            raise PixelNNError(f"{self.url} has no committed version (was its build interrupted?); "
                               f"rebuild it with `pixelnn index ... --overwrite`")
        if version is None:
            version = numbers[-1]
        elif version not in numbers:
            raise PixelNNError(f"{self.url} has no version {version}; committed: {few(numbers, 5)}")
        rel = f"{VERSIONS}/{version:08d}.json"
        manifest = loc.read_json(rel)
        if manifest.get("format") != FORMAT_NAME or manifest.get("number") != version:
            raise PixelNNError(f"{self.url}: versions/{version:08d}.json is corrupt")
        src = f"{self.url.rstrip('/')}/{rel}"
        need(manifest, "count", src, int)
        index = need(manifest, "index", src, dict)
        need(index, "file", f"{src}: index", str)
        need(index, "kind", f"{src}: index", str)
        self.version, self.manifest = version, manifest
        self._segments = [_Segment(loc, e, src) for e in need(manifest, "segments", src, list)]
        self._reducer = None
        self._index = None
        counts = np.array([s.count for s in self._segments], np.int64)
        self._row_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (S+1,)
        removed = [s.removed + self._row_starts[i] for i, s in enumerate(self._segments)]
        self._removed_rows = np.concatenate(removed).astype(np.int64) if removed else np.zeros(0, np.int64)
        live = np.ones(int(self._row_starts[-1]), bool)
        live[self._removed_rows] = False
        self._live_rows = np.flatnonzero(live).astype(np.int64)  # position -> row
        if len(self._live_rows) != int(manifest["count"]):
            raise PixelNNError(f"{self.url}: version {version} is corrupt: count {manifest['count']} but its "
                               f"segments hold {len(self._live_rows)} live exemplars")
        self._records = self._read_records()

    def _read_records(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for s in self._segments:
            rel = f"{SEGMENTS}/{s.name}/{RECORDS}"
            data = self.loc.read_bytes(rel)
            want = s.entry["files"].get(RECORDS, {}).get("sha256")
            if _sha256(data) != want:
                raise PixelNNError(f"{self.url}: segment {s.name} has a bad checksum in {RECORDS}")
            # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose import pulls in pandas
            # (0.3-0.4 s of every start-up); the table is the same
            tables.append(pq.ParquetFile(pa.BufferReader(data)).read())
        if not tables:
            return pa.table({c: pa.array([], pa.string()) for c in _RECORD_COLUMNS})
        table = pa.concat_tables(tables, promote_options="permissive")
        if len(self._removed_rows):
            table = table.take(_indices(self._live_rows))
        return table.combine_chunks()

    # ------------------------------------------------------------------ contract
    def __len__(self) -> int:
        return len(self._live_rows)

    def __repr__(self) -> str:
        return (f"ZarrLibrary({self.url!r}, n={len(self)}, version={self.version}, segments={len(self._segments)}, "
                f"task={self.task.name}, size={self.image_size}, dim={self.dim})")

    @property
    def root(self) -> Path | None:
        """The local folder (None for a remote URL)."""
        return Path(self.loc.root) if self.loc.local else None

    @property
    def pixel_cache_dir(self) -> None:
        """Chunked stores keep no pixel descriptors (they are computed per query)."""
        return None

    def take(self, field: str, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of a field at some positions, in the order given (reads only their chunks).

        Parameters
        ----------
        field : {'photos', 'stage1', 'inputs', 'global'}
            ``global`` is the stored (reduced) descriptor, (M, d) float32.
        positions : sequence of int
        """
        check_field(field)
        pos = check_positions(positions, len(self))
        kept = self._row_cache.get(field) if self.row_cache_rows > 0 else None
        if kept is None or not len(pos):
            return self._take(field, pos)
        wanted = np.unique(pos).tolist()
        with self._row_lock:
            found = {p: kept[p] for p in wanted if p in kept}
            for p in found:
                kept.move_to_end(p)
        missing = [p for p in wanted if p not in found]
        if missing:
            fresh = self._take(field, np.array(missing, np.int64))
            with self._row_lock:
                for p, row in zip(missing, fresh):
                    found[p] = kept[p] = row
                    kept.move_to_end(p)
                while len(kept) > self.row_cache_rows:
                    kept.popitem(last=False)
        return np.stack([found[p] for p in pos.tolist()])

    def _take(self, field: str, pos: np.ndarray) -> np.ndarray:
        """:meth:`take` from the shards (checked positions, no row cache)."""
        rows = self._live_rows[pos]
        seg = np.searchsorted(self._row_starts, rows, side="right") - 1  # (M,)
        out = None
        for s in np.unique(seg):
            at = np.flatnonzero(seg == s)
            local = rows[at] - self._row_starts[s]
            uniq, inverse = np.unique(local, return_inverse=True)
            block = self._segments[s].read(field, uniq)[inverse]
            if out is None:
                dtype = np.float32 if field == "global" else block.dtype
                out = np.empty((len(pos), *block.shape[1:]), dtype)
            out[at] = block
        if out is None:
            shape = self._empty_shape(field)
            out = np.empty((0, *shape), np.float32 if field == "global" else np.uint8)
        return out

    def _empty_shape(self, field: str) -> tuple[int, ...]:
        if field == "global":
            return (self.dim,)
        if field == "inputs":
            return (self.task.input_size, self.task.input_size, self.task.input_channels)
        return (self.image_size, self.image_size, 3)

    def ids_of(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        import pyarrow as pa

        pos = check_positions(positions, len(self))
        return self._records.column("id").take(_indices(pos)).to_pylist()

    def records_of(self, positions: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """Records ``{"dataset", "id", "labels", "source", "split"}`` (as version-1 libraries write them)."""
        import pyarrow as pa

        pos = check_positions(positions, len(self))
        rows = self._records.take(_indices(pos)).to_pylist()
        return [_record_dict(r) for r in rows]

    @property
    def ids(self) -> list[str]:
        """Every exemplar id in position order (a new list: O(N))."""
        return self._records.column("id").to_pylist()

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record in position order (a new list of dicts: O(N) memory; prefer :meth:`records_of`)."""
        return [_record_dict(r) for r in self._records.to_pylist()]

    def position(self, exemplar_id: str) -> int:
        import pyarrow.compute as pc

        p = pc.index(self._records.column("id"), str(exemplar_id)).as_py()
        if p < 0:
            raise PixelNNError(f"unknown exemplar id {exemplar_id!r}; the library has {len(self)}, "
                               f"e.g. {few(self.ids_of(range(min(3, len(self)))), 3)}")
        return int(p)

    def labels_index(self) -> dict[str, dict[str, int]]:
        """``{label key: {value: count}}`` over the live exemplars (most frequent first)."""
        import pyarrow.compute as pc

        out = {}
        for name in sorted(self._records.column_names):
            if not name.startswith("label."):
                continue
            counts = pc.value_counts(self._records.column(name).combine_chunks().cast("string")).to_pylist()
            values = {c["values"]: int(c["counts"]) for c in counts if c["values"] is not None}
            if values:
                out[name[6:]] = dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
        return out

    def select(self, where: dict[str, Any] | None = None, ids: Sequence[str] | None = None) -> np.ndarray:
        """Sorted positions matching label constraints (AND across keys, OR within) and/or ids (columnar)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        mask = np.ones(len(self), bool)
        if where:
            for key, values in check_where(where, self.labels_index()).items():
                col = self._records.column(f"label.{key}").combine_chunks().cast("string")
                mask &= pc.fill_null(pc.is_in(col, value_set=pa.array(values, pa.string())), False).to_numpy(
                    zero_copy_only=False)
        if ids is not None:
            ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
            wanted = pa.array(ids, pa.string())
            known = pc.is_in(wanted, value_set=self._records.column("id").combine_chunks()).to_numpy(zero_copy_only=False)
            if not known.all():
                unknown = [i for i, k in zip(ids, known) if not k]
                raise PixelNNError(f"{len(unknown)} unknown exemplar id(s): {few(unknown, 3)}; the store has "
                                   f"{len(self)}, e.g. {few(self.ids_of(range(min(3, len(self)))), 3)}")
            mask &= pc.is_in(self._records.column("id"), value_set=wanted).to_numpy(zero_copy_only=False)
        return np.flatnonzero(mask).astype(np.int64)

    # ------------------------------------------------------------------ search
    @property
    def reducer(self):
        """The :class:`pixelnn.ann.PCAReducer` of the conv5 descriptors (None when they are stored in full)."""
        if self._reducer is None and self.dim != self.full_dim:
            ann = _reducer_module()
            data = self.loc.read_bytes(REDUCER_FILE)
            if _sha256(data) != self.info["descriptor"].get("reducer_sha256"):
                raise PixelNNError(f"{self.url}: {REDUCER_FILE} has a bad checksum")
            self._reducer = ann.PCAReducer.from_bytes(data)
        return self._reducer

    def reduce(self, desc: np.ndarray) -> np.ndarray:
        """Full conv5 descriptors (Q, D) -> what the store searches (Q, d) float32 (a copy when unreduced)."""
        desc = np.atleast_2d(np.asarray(desc, np.float32))
        if desc.shape[1] == self.dim and self.dim != self.full_dim:
            return desc
        if desc.shape[1] != self.full_dim:
            raise PixelNNError(f"query descriptors must be (Q, {self.full_dim}), got shape {tuple(desc.shape)}")
        return np.array(desc) if self.reducer is None else self.reducer.transform(desc)

    @property
    def index(self):
        """The version's global index (:class:`pixelnn.ann.AnnIndex`), memory-mapped on first use."""
        if self._index is None:
            self._index = _read_index(self.loc, self.manifest["index"])
        return self._index

    def search(self, query_desc: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Global nearest exemplars: ``(D, I)`` each (Q, k), positions padded with -1 / -inf (the store contract).

        ``query_desc`` are full conv5 descriptors (:func:`pixelnn.retrieval.global_descriptors`); the store
        reduces them as it reduced its own. ``allowed`` restricts to these positions (the filter runs inside
        the index search).
        """
        q = self.reduce(query_desc)
        rows = None
        if allowed is not None:
            rows = self._live_rows[check_positions(np.unique(np.asarray(allowed, np.int64)), len(self))]
        excluded = self._removed_rows if len(self._removed_rows) and rows is None else None
        D, I = self.index.search(q, k, allowed=rows, excluded=excluded)
        found = I >= 0
        pos = np.full(I.shape, -1, np.int64)
        pos[found] = np.searchsorted(self._live_rows, I[found])
        if found.any() and not np.array_equal(self._live_rows[pos[found]], I[found]):
            raise PixelNNError(f"{self.url}: the index returned a removed row; run `pixelnn library verify`")
        return D, pos

    # ------------------------------------------------------------------ model, summary
    @property
    def model_dir(self) -> Path | None:
        p = (self.info.get("model") or {}).get("path")
        return Path(p) if p else None

    def load_model(self, device: Any = "cpu"):
        """The library's copy of the stage-1 regressor, in eval mode, on ``device`` (refused when the file's sha256
        is not the one ``store.json`` records)."""
        data = self.loc.read_bytes(MODEL_FILE)
        _check_model_bytes(self.loc, data, (self.info.get("model") or {}).get("weights_sha256"))
        return _load_model_bytes(data, device)

    def versions(self) -> list[int]:
        return committed_versions(self.loc)

    def disk_bytes(self, all_versions: bool = True) -> int:
        """Bytes the store uses (every file; or only what this version references)."""
        if all_versions:
            return int(sum(self.loc.files().values()))
        files = self.loc.files()
        keep = [STORE_JSON, MODEL_FILE, REDUCER_FILE, f"{VERSIONS}/{self.version:08d}.json",
                self.manifest["index"]["file"]]
        total = sum(files.get(f, 0) for f in keep)
        for s in self._segments:
            total += sum(v for p, v in files.items() if p.startswith(f"{SEGMENTS}/{s.name}/"))
        return int(total)

    def summary(self) -> str:
        removed = len(self._removed_rows)
        datasets = sorted({e.get("dataset") for e in self.manifest["segments"]})
        n = max(len(self), 1)
        disk = self.disk_bytes()
        return (f"{self.url}: {len(self)} exemplars from {len(datasets)} dataset(s) in {len(self._segments)} "
                f"segment(s), version {self.version}{f' ({removed} removed, not yet compacted)' if removed else ''}; "
                f"{self.image_size}x{self.image_size} images, conv5 descriptors {self.dim}-d "
                f"{self.info['descriptor']['stored_dtype']}, index {self.manifest['index']['kind']}; "
                f"{disk / 2**20:.1f} MiB on disk ({disk / n / 1000:.1f} KB per exemplar)")

    def verify(self, progress: bool = False) -> list[str]:
        """Check the sha256 of every file this version lists (and of the model and reducer); returns the problems found."""
        from tqdm.auto import tqdm

        problems = []
        for s in tqdm(self._segments, desc="verify", unit="segment", disable=not progress):
            for rel, want in s.entry["files"].items():
                try:
                    data = self.loc.read_bytes(f"{SEGMENTS}/{s.name}/{rel}")
                except PixelNNError as e:
                    problems.append(str(e))
                    continue
                if _sha256(data) != want["sha256"]:
                    problems.append(f"segment {s.name}: {rel} has a bad checksum")
        want = {MODEL_FILE: (self.info.get("model") or {}).get("weights_sha256"),
                REDUCER_FILE: self.info["descriptor"].get("reducer_sha256") if self.dim != self.full_dim else None}
        for rel, sha in want.items():
            if sha is None:
                continue
            try:
                if _sha256(self.loc.read_bytes(rel)) != sha:
                    problems.append(f"{rel} has a bad checksum")
            except PixelNNError as e:
                problems.append(str(e))
        idx = self.manifest["index"]
        try:
            if _sha256(self.loc.read_bytes(idx["file"])) != idx["sha256"]:
                problems.append(f"{idx['file']} has a bad checksum")
        except PixelNNError as e:
            problems.append(str(e))
        return problems

    # ------------------------------------------------------------------ changes
    def add(self, data_dir: str | Path, split: str = "train", progress: bool = True, batch_size: int = 64,
            id_prefix: str | None = None, device: Any = "cpu", block_size: int = BLOCK_SIZE):
        """Add a prepared dataset's ``split`` pairs as new segments, in one commit (ids already present are
        skipped). Returns :class:`pixelnn.library.AddResult`."""
        from pixelnn.library import AddResult

        with store_lock(self.loc):
            plan = plan_build(self.url, None, [data_dir], split=split, block_size=block_size, id_prefix=id_prefix,
                              batch_size=batch_size, device=device, progress=progress)
            infos = [write_block(plan, b, progress=progress) for b in plan.blocks]
            commit_build(plan, infos, progress=progress)
            self._load(None)
        path = str(Path(data_dir).resolve())
        return AddResult(path, sum(b.count for b in plan.blocks), plan.skipped.get(path, 0))

    def remove(self, ids: Iterable[str]) -> int:
        """Remove exemplars by id (tombstones in a new version); all must exist or nothing is removed."""
        ids = list(dict.fromkeys(str(i) for i in ([ids] if isinstance(ids, str) else ids)))
        if not ids:
            return 0
        with store_lock(self.loc):
            self._load(None)  # what another writer committed while this one waited
            return self._remove(ids)

    def _remove(self, ids: list[str]) -> int:
        pos = self.select(ids=ids)
        rows = self._live_rows[pos]
        seg = np.searchsorted(self._row_starts, rows, side="right") - 1
        manifest = json.loads(json.dumps(self.manifest))
        for s, r in zip(seg, rows):
            entry = manifest["segments"][s]
            entry["removed"] = sorted(set(entry.get("removed", [])) | {int(r - self._row_starts[s])})
        manifest["count"] = len(self) - len(pos)
        _commit(self.loc, manifest)
        self._load(None)
        return len(pos)

    def compact(self, progress: bool = False) -> int:
        """Rewrite segments with removed rows without them, rebuild the index, and delete the old segments.

        Positions are unchanged. Returns the number of rows dropped.
        """
        with store_lock(self.loc):
            self._load(None)  # what another writer committed while this one waited
            return self._compact(progress)

    def _compact(self, progress: bool) -> int:
        todo = [k for k, s in enumerate(self._segments) if len(s.removed)]
        if not todo:
            return 0
        _remove_orphans(self.loc)
        manifest = json.loads(json.dumps(self.manifest))
        number = committed_versions(self.loc)[-1] + 1
        old, dropped, entries = [], 0, []
        for k, s in enumerate(self._segments):
            entry = manifest["segments"][k]
            if k not in todo:
                entries.append(entry)
                continue
            dropped += len(s.removed)
            old.append(s.name)
            keep = np.setdiff1d(np.arange(s.count), s.removed)
            if len(keep) == 0:
                continue
            start = self._row_starts[k]
            first = int(np.searchsorted(self._live_rows, start))
            positions = np.arange(first, first + len(keep))

            def chunks(positions=positions):
                for i in range(0, len(positions), SHARD_ROWS):
                    p = positions[i:i + SHARD_ROWS]
                    yield {f: self._take_stored(f, p) for f in ("photos", "stage1", "inputs", "global")}

            name = f"v{number:06d}c{len(entries):05d}"
            extra = {key: entry[key] for key in ("dataset", "split") if key in entry}
            info = write_segment(self.loc, name, chunks(), self.records_of(positions), self.image_size,
                                 self._empty_shape("inputs"), self.dim, self.info["descriptor"]["stored_dtype"], extra)
            entries.append({**info, "removed": []})
        manifest["segments"] = entries
        manifest["index"] = _build_index(self.loc, manifest, number, self.index_memory, progress=progress,
                                         spec=self.manifest["index"])
        _commit(self.loc, manifest, number)
        for name in old:
            self.loc.remove(f"{SEGMENTS}/{name}")
        self._load(None)
        return dropped

    def _take_stored(self, field: str, positions: np.ndarray) -> np.ndarray:
        """Like :meth:`take`, but ``global`` in its stored dtype (for copying)."""
        out = self.take(field, positions)
        return out.astype(self.info["descriptor"]["stored_dtype"]) if field == "global" else out


def _record_dict(row: dict[str, Any]) -> dict[str, Any]:
    labels = {k[6:]: v for k, v in row.items() if k.startswith("label.") and v is not None}
    rec = {"dataset": row.get("dataset"), "id": row["id"], "labels": labels, "source": row.get("source"),
           "split": row.get("split")}
    if row.get("dataset_id") is not None:
        rec["dataset_id"] = row["dataset_id"]
    return dict(sorted(rec.items()))


def open_library(url: str | Path, model_dir: str | Path | None = None, **kwargs: Any):
    """Open an exemplar library of either format: a chunked store (:class:`ZarrLibrary`,
    a local folder or any fsspec URL) or a version-1 ``.npy`` library (:class:`pixelnn.library.ExemplarLibrary`).

    A one-line PixelNNError when ``url`` holds neither (naming how to build one).
    """
    from pixelnn.library import MANIFEST, ExemplarLibrary

    url = str(url)
    loc = Location(url)
    if loc.local:
        recover(loc.root)  # an `index --overwrite` killed between its two renames is undone here
    if loc.exists(STORE_JSON):
        return ZarrLibrary.open(url, **kwargs)
    if loc.local and (Path(loc.root) / MANIFEST).is_file():
        return ExemplarLibrary.open(loc.root)
    hint = f" --model {model_dir}" if model_dir else " --model MODEL_DIR"
    if loc.exists(""):
        raise PixelNNError(f"{url} is not a PixelNN library (no {STORE_JSON} or {MANIFEST}); build one "
                           f"with `pixelnn index DATA_DIR{hint} --out {url}`")
    raise PixelNNError(f"no exemplar library at {url}; build it with `pixelnn index DATA_DIR{hint}`")


def store_lock(target: Location | str | os.PathLike, what: str = "library"):
    """:func:`pixelnn.io.writer_lock` of a local store (``.NAME.lock`` beside it); nothing for object stores."""
    loc = target if isinstance(target, Location) else Location(target)
    return writer_lock(loc.root, what) if loc.local else contextlib.nullcontext()


def committed_versions(loc: Location) -> list[int]:
    """The committed version numbers of a store, ascending."""
    out = []
    for name in loc.listdir(VERSIONS):
        stem, _, ext = name.partition(".")
        if ext == "json" and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def _commit(loc: Location, manifest: dict[str, Any], number: int | None = None) -> int:
    """Create the next ``versions/N.json`` (the commit point); returns N."""
    numbers = committed_versions(loc)
    number = (numbers[-1] + 1 if numbers else 1) if number is None else number
    manifest = {**manifest, "format": FORMAT_NAME, "number": number,
                "parent": numbers[-1] if numbers else None, "time": _now()}
    loc.create_exclusive(f"{VERSIONS}/{number:08d}.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return number


def _clean_temp_files(loc: Location) -> None:
    """Delete the temporary files (``.NAME.tmp.PID.*``) that dead writers left in a local store's folders."""
    if loc.local:
        for d in ("", VERSIONS, INDEX_DIR, "model", "global"):
            recover_all(Path(loc.path(d)))


def _remove_orphans(loc: Location) -> None:
    """Delete segments and index files that no committed version lists (left by an interrupted writer), and
    the temporary files of dead writers (local stores)."""
    _clean_temp_files(loc)
    listed_segments, listed_index = set(), set()
    for n in committed_versions(loc):
        m = loc.read_json(f"{VERSIONS}/{n:08d}.json")
        listed_segments |= {e["name"] for e in m.get("segments", [])}
        listed_index.add(m.get("index", {}).get("file"))
    for name in loc.listdir(SEGMENTS):
        if name not in listed_segments:
            log.info("removing orphan segment %s", name)
            loc.remove(f"{SEGMENTS}/{name}")
    for name in loc.listdir(INDEX_DIR):
        if f"{INDEX_DIR}/{name}" not in listed_index:
            loc.remove(f"{INDEX_DIR}/{name}")


def _check_model_bytes(loc: Location, data: bytes, want: str | None) -> None:
    """Refuse the store's copy of the weights when it differs from the sha256 recorded at build time."""
    if want and _sha256(data) != want:
        raise PixelNNError(f"weights {loc.url.rstrip('/')}/{MODEL_FILE} do not match their recorded sha256 (file "
                           f"damaged or replaced); rebuild the library with `pixelnn index ... --overwrite`")


@functools.lru_cache(maxsize=2)
def _load_model_cached(data_sha: str, data: bytes, device: str, url: str = ""):
    if _sha256(data) != data_sha:
        raise PixelNNError(f"weights {url.rstrip('/')}/{MODEL_FILE} do not match their recorded sha256 (file damaged "
                           f"or replaced); rebuild the library with `pixelnn index ... --overwrite`")
    return _load_model_bytes(data, device)


def _load_model_bytes(data: bytes, device: Any):
    import tempfile

    from pixelnn.devices import resolve_device
    from pixelnn.models.regressor import Regressor

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "regressor.safetensors"
        path.write_bytes(data)
        return Regressor.load(path).to(resolve_device(device))


# ------------------------------------------------------------------------------------------- index
def _iter_global(loc: Location, entries: list[dict[str, Any]], chunk: int = SHARD_ROWS) -> Iterator[np.ndarray]:
    """Every row's stored descriptor, (m, d) float32 chunks, in row order (removed rows included)."""
    for e in entries:
        seg = _Segment(loc, e)
        for i in range(0, seg.count, chunk):
            yield seg.read("global", np.arange(i, min(i + chunk, seg.count))).astype(np.float32)


def _build_index(loc: Location, manifest: dict[str, Any], number: int, memory: int, progress: bool = False,
                 spec: dict[str, Any] | None = None, base: Any = None) -> dict[str, Any]:
    """Build (or extend ``base``) the index over every row of ``manifest``'s segments; write index/<number>.faiss.

    ``spec`` (the previous version's index entry) keeps the kind when the size still fits it.
    """
    ann = _reducer_module()
    entries = manifest["segments"]
    n = int(sum(e["count"] for e in entries))
    dim = int(manifest["dim"])
    kind = ann.choose_index(n, dim, memory)
    if base is not None and spec is not None and spec.get("kind") == kind:
        index = base
        done = int(spec["rows"])
        skip = done
        for x in _iter_global(loc, entries):
            if skip >= len(x):
                skip -= len(x)
                continue
            index.add(x[skip:])
            skip = 0
    else:
        train = None
        if kind == "ivfpq":  # trained once, on evenly spaced rows
            train = _take_rows(loc, entries, np.unique(np.linspace(0, n - 1, min(n, INDEX_TRAIN_MAX)).astype(np.int64)))
        index = ann.AnnIndex.build(_iter_global(loc, entries), n=n, dim=dim, kind=kind, train=train,
                                   memory_budget_bytes=memory)
    rel = f"{INDEX_DIR}/{number:08d}.faiss"
    data = index.to_bytes()
    loc.write_bytes(rel, data)
    return {"file": rel, "kind": index.kind, "rows": n, "dim": dim, "sha256": _sha256(data), "bytes": len(data),
            "params": dict(getattr(index, "params", {}) or {})}


def _take_rows(loc: Location, entries: list[dict[str, Any]], rows: np.ndarray) -> np.ndarray:
    """Stored descriptors of some rows (sorted), (m, d) float32."""
    starts = np.concatenate([[0], np.cumsum([e["count"] for e in entries])])
    seg = np.searchsorted(starts, rows, side="right") - 1
    out = []
    for s in np.unique(seg):
        out.append(_Segment(loc, entries[s]).read("global", rows[seg == s] - starts[s]).astype(np.float32))
    return np.concatenate(out)


def _read_index(loc: Location, spec: dict[str, Any]):
    ann = _reducer_module()
    if loc.local:
        path = loc.path(spec["file"])
        if not os.path.isfile(path):
            raise PixelNNError(f"{loc.url} is missing {spec['file']}")
        if os.path.getsize(path) != int(spec.get("bytes", -1)):
            raise PixelNNError(f"{loc.url}: {spec['file']} has a bad checksum (size differs)")
        return ann.AnnIndex.read(path, mmap=True)
    data = loc.read_bytes(spec["file"])
    if _sha256(data) != spec.get("sha256"):
        raise PixelNNError(f"{loc.url}: {spec['file']} has a bad checksum")
    return ann.AnnIndex.from_bytes(data)


# ------------------------------------------------------------------------------------------- building
@dataclasses.dataclass
class Block:
    """Rows of one dataset that become one segment."""

    segment: str
    dataset: str
    rows: list[int]  # dataset row numbers of the split, increasing

    @property
    def count(self) -> int:
        return len(self.rows)


@dataclasses.dataclass
class BuildPlan:
    """Everything a worker needs to write a block, and the driver to commit (JSON-able: :meth:`to_dict`)."""

    url: str  # where segments are written (the store itself, or a staging folder for a new local build)
    target: str  # the store's final URL
    split: str
    batch_size: int
    device: str
    id_prefix: str
    model_sha256: str
    blocks: list[Block]
    base_version: int  # 0 for a new store
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    datasets: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    overwrite: bool = False
    index_memory: int = INDEX_MEMORY

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildPlan":
        d = dict(d)
        d["blocks"] = [Block(**b) for b in d["blocks"]]
        return cls(**d)


def _staging_url(target: Location) -> str:
    p = Path(target.root)
    return str(p.parent / f".{p.name}.building")


def plan_build(url: str | os.PathLike | None, model_dir: str | Path | None, data_dirs: Sequence[str | Path],
               split: str = "train", global_dims: int = GLOBAL_DIMS, block_size: int = BLOCK_SIZE,
               overwrite: bool = False, id_prefix: str | None = None, batch_size: int = 64, device: Any = "cpu",
               progress: bool = True, index_memory: int = INDEX_MEMORY) -> BuildPlan:
    """Plan a build (a new store from ``model_dir``) or an addition (``url`` exists): blocks, names, reduction.

    A new store's ``store.json``, model copy and descriptor reduction are written here (to a staging
    folder next to a local target, so that the target appears only at :func:`commit_build`); the
    reduction is a PCA of the conv5 descriptors of up to :data:`REDUCER_FIT_MAX` evenly spaced
    exemplars (``global_dims=0`` stores them in full, float32).
    """
    from pixelnn.data.dataset import SPLITS, Dataset
    from pixelnn.library import _check_task, _read_model

    if split not in SPLITS:
        raise PixelNNError(f"invalid split {split!r}; valid: {', '.join(SPLITS)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise PixelNNError(f"block size must be a positive integer, got {block_size!r}")
    if not data_dirs:
        raise PixelNNError("no datasets given to build the library from")
    if url is None:
        url = Path(model_dir) / "library"
    target = Location(url)
    adding = target.exists(STORE_JSON) and not overwrite
    if adding:
        lib = ZarrLibrary.open(target.url)
        _remove_orphans(target)
        work = target
        task, base_version = lib.task, lib.version
        model_sha = lib.info["model"]["weights_sha256"]
        existing = set(lib.ids)
        number = base_version + 1
    else:
        if model_dir is None:
            raise PixelNNError(f"{target.url} is not a PixelNN store; give --model to build one")
        if target.exists() and not overwrite and target.listdir(""):
            raise PixelNNError(f"{target.url} already exists and is not a PixelNN store; choose another --out "
                               f"or pass --overwrite")
        if target.local and overwrite:
            from pixelnn.library import REPLACES

            check_replaceable(target.root, REPLACES, "library")
        weights, config = _read_model(Path(model_dir))
        task = config_from(TaskConfig, config["task"], Path(model_dir) / "config.json", "task")
        work = Location(_staging_url(target)) if target.local else target
        if not target.local and overwrite:
            target.remove("")
        model_sha, base_version, existing, number = _sha256(weights), 0, set(), 1
    datasets = [Dataset(d) for d in data_dirs]
    for ds in datasets:
        _check_task(task, ds.task, f"dataset {ds.root}")
    prefix = id_prefix or ""
    blocks, skipped, summary = [], {}, []
    for ds in datasets:
        data = ds.split(split)
        if data.photos.shape[1:] != (task.size, task.size, 3):
            raise PixelNNError(f"dataset {ds.root} has {list(data.photos.shape[1:])} photos; the library holds "
                               f"{[task.size, task.size, 3]}")
        keep = []
        for j, r in enumerate(data.records):
            rid = prefix + str(r["id"])
            if rid not in existing:
                existing.add(rid)
                keep.append(j)
        path = str(ds.root.resolve())
        skipped[path] = len(data.records) - len(keep)
        summary.append({"path": path, "split": split, "added": len(keep), "skipped": skipped[path], "time": _now()})
        for i in range(0, len(keep), block_size):
            blocks.append(Block(f"v{number:06d}b{len(blocks):05d}", path, keep[i:i + block_size]))
    from pixelnn.devices import resolve_device

    plan = BuildPlan(url=work.url, target=target.url, split=split, batch_size=int(batch_size),
                     device=str(resolve_device(device)),
                     id_prefix=prefix, model_sha256=model_sha, blocks=blocks, base_version=base_version,
                     skipped=skipped, datasets=summary, overwrite=bool(overwrite), index_memory=int(index_memory))
    if not adding:
        key = _plan_key(plan, global_dims)
        if work.exists(PLAN_JSON) and work.read_json(PLAN_JSON) == key:  # an interrupted build of the same plan
            done = [b for b in blocks if work.exists(f"{SEGMENTS}/{b.segment}/{SEGMENT_JSON}")]
            for name in work.listdir(SEGMENTS):
                if name.startswith(".tmp-"):
                    work.remove(f"{SEGMENTS}/{name}")
            _clean_temp_files(work)
            log.warning("resuming an interrupted build of %s: %d of %d segments already written", target.url,
                        len(done), len(blocks))
        else:
            work.remove("")
            _create_store(work, Path(model_dir), weights, config, task, plan, global_dims, progress)
            work.write_json(PLAN_JSON, key)  # last: the staging folder is resumable from here on
    return plan


def _plan_key(plan: BuildPlan, global_dims: int) -> dict[str, Any]:
    """What makes two new-store plans the same build (a re-run resumes the staged segments)."""
    return {"model_sha256": plan.model_sha256, "split": plan.split, "batch_size": plan.batch_size,
            "id_prefix": plan.id_prefix, "global_dims": int(global_dims or 0), "device": plan.device,
            "blocks": [dataclasses.asdict(b) for b in plan.blocks]}


def _create_store(work: Location, model_dir: Path, weights: bytes, config: dict[str, Any], task: TaskConfig,
                  plan: BuildPlan, global_dims: int, progress: bool) -> None:
    from pixelnn.retrieval import descriptor_dim

    full = descriptor_dim(task.size)
    work.write_bytes(MODEL_FILE, weights)
    n = sum(b.count for b in plan.blocks)
    dims = int(global_dims or 0)
    if isinstance(global_dims, bool) or dims < 0:
        raise PixelNNError(f"global dims must be 0 (full) or positive, got {global_dims!r}")
    fit_n = min(n, REDUCER_FIT_MAX)
    reduce = 0 < dims < full and fit_n >= 2 * dims
    if 0 < dims < full and not reduce:
        log.info("%d exemplars are too few to fit a %d-d PCA; storing full descriptors", n, dims)
    desc = _descriptor_info(full, dims if reduce else 0)
    if reduce:
        ann = _reducer_module()
        sample = _fit_sample(plan, fit_n)
        x = _describe_rows(work, plan, sample, progress)
        reducer = ann.PCAReducer.fit(x, dims)
        data = reducer.to_bytes()
        work.write_bytes(REDUCER_FILE, data)
        desc.update(reducer_sha256=_sha256(data), reducer_fit_rows=int(len(x)))
    info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created": _now(), "task": task.to_dict(),
            "image_size": task.size, "descriptor": desc,
            "model": {"path": str(model_dir.resolve()), "weights": MODEL_FILE, "weights_sha256": plan.model_sha256,
                      "regressor": config.get("regressor"), "trained_on": (config.get("dataset") or {}).get("path")}}
    work.write_json(STORE_JSON, info)


def _descriptor_info(full: int, dims: int) -> dict[str, Any]:
    """The store's descriptor entry: conv5 of ``full`` dims, kept reduced to ``dims`` float16 (0: full float32)."""
    from pixelnn.retrieval import DESCRIPTOR_LAYER, DESCRIPTOR_NAME

    return {"name": DESCRIPTOR_NAME, "layer": DESCRIPTOR_LAYER, "dim": full, "normalised": "l2",
            "similarity": "inner product", "stored_dim": dims or full, "stored_dtype": "float16" if dims else "float32",
            "reduction": "pca" if dims else None}


def _fit_sample(plan: BuildPlan, m: int) -> list[tuple[int, int]]:
    """``m`` evenly spaced (block, row-in-block) pairs over the plan's rows."""
    n = sum(b.count for b in plan.blocks)
    flat = np.unique(np.linspace(0, n - 1, m).astype(np.int64)) if n else np.zeros(0, np.int64)
    starts = np.cumsum([0] + [b.count for b in plan.blocks])
    out = []
    for f in flat:
        b = int(np.searchsorted(starts, f, side="right") - 1)
        out.append((b, int(f - starts[b])))
    return out


def _describe_rows(work: Location, plan: BuildPlan, sample: list[tuple[int, int]], progress: bool) -> np.ndarray:
    """Full conv5 descriptors of the stage-1 outputs of some planned rows (to fit the reduction)."""
    from tqdm.auto import tqdm

    from pixelnn.data.dataset import Dataset
    from pixelnn.models.regressor import predict
    from pixelnn.retrieval import global_descriptors

    model = _load_model_cached(plan.model_sha256, work.read_bytes(MODEL_FILE), plan.device, work.url)
    by_dataset: dict[str, list[int]] = {}
    for b, r in sample:
        by_dataset.setdefault(plan.blocks[b].dataset, []).append(plan.blocks[b].rows[r])
    out = []
    with tqdm(total=len(sample), desc="fit descriptor PCA", unit="img", disable=not progress) as bar:
        for path, rows in by_dataset.items():
            data = Dataset(path).split(plan.split)
            for i in range(0, len(rows), CHUNK):
                inputs = np.asarray(data.inputs[np.asarray(rows[i:i + CHUNK])])
                stage1 = predict(model, inputs, plan.batch_size)
                out.append(global_descriptors(stage1, plan.batch_size, device=plan.device))
                bar.update(len(inputs))
    return np.concatenate(out)


@functools.lru_cache(maxsize=2)
def _store_parts(url: str, model_sha: str, device: str):
    """The model and the descriptor reduction of a (staged) store, loaded once per process."""
    loc = Location(url)
    info = loc.read_json(STORE_JSON)
    model = _load_model_cached(model_sha, loc.read_bytes(MODEL_FILE), device, loc.url)
    reducer = None
    if info["descriptor"]["stored_dim"] != info["descriptor"]["dim"]:
        data = loc.read_bytes(REDUCER_FILE)
        if _sha256(data) != info["descriptor"].get("reducer_sha256"):
            raise PixelNNError(f"{loc.url}: {REDUCER_FILE} has a bad checksum")
        reducer = _reducer_module().PCAReducer.from_bytes(data)
    return info, model, reducer


def written_block(plan: BuildPlan | dict[str, Any], block: Block | dict[str, Any]) -> dict[str, Any] | None:
    """The info of ``block``'s segment when an earlier (interrupted) run of the build wrote it completely, else None."""
    plan = BuildPlan.from_dict(plan) if isinstance(plan, dict) else plan
    block = Block(**block) if isinstance(block, dict) else block
    loc = Location(plan.url)
    path = f"{SEGMENTS}/{block.segment}/{SEGMENT_JSON}"
    return loc.read_json(path) if loc.exists(path) else None


def write_block(plan: BuildPlan | dict[str, Any], block: Block | dict[str, Any], progress: bool = False
                ) -> dict[str, Any]:
    """Compute one block (stage 1, conv5 descriptors, reduction) and write its segment; returns its info.

    Idempotent (a block whose segment is complete is not recomputed), and independent of the engine
    and of which process runs it, so that local and distributed builds write the same bytes. The
    model is loaded once per process.
    """
    from tqdm.auto import tqdm

    from pixelnn.data.dataset import Dataset
    from pixelnn.models.regressor import predict
    from pixelnn.retrieval import global_descriptors

    plan = BuildPlan.from_dict(plan) if isinstance(plan, dict) else plan
    block = Block(**block) if isinstance(block, dict) else block
    done = written_block(plan, block)
    if done is not None:
        return done
    loc = Location(plan.url)
    info, model, reducer = _store_parts(plan.url, plan.model_sha256, plan.device)
    data = Dataset(block.dataset).split(plan.split)
    rows = np.asarray(block.rows, np.int64)
    contiguous = len(rows) > 0 and rows[-1] - rows[0] + 1 == len(rows)
    desc = info["descriptor"]

    def chunks() -> Iterator[dict[str, np.ndarray]]:
        with tqdm(total=len(rows), desc=f"segment {block.segment}", unit="img", disable=not progress,
                  leave=False) as bar:
            for i in range(0, len(rows), CHUNK):
                sel = slice(int(rows[i]), int(rows[min(i + CHUNK, len(rows)) - 1]) + 1) if contiguous \
                    else rows[i:i + CHUNK]
                photos, inputs = np.asarray(data.photos[sel]), np.asarray(data.inputs[sel])
                stage1 = predict(model, inputs, plan.batch_size)  # (B, S, S, 3) uint8
                g = global_descriptors(stage1, plan.batch_size, device=next(model.parameters()).device)
                g = (reducer.transform(g) if reducer is not None else g).astype(desc["stored_dtype"])
                bar.update(len(photos))
                yield {"photos": photos, "stage1": stage1, "inputs": inputs, "global": g}

    records = []
    for j in block.rows:
        r = data.records[j]
        rec = {"id": plan.id_prefix + str(r["id"]), "source": r.get("source"), "labels": r.get("labels", {}),
               "dataset": block.dataset, "split": plan.split}
        if plan.id_prefix:
            rec["dataset_id"] = r["id"]
        records.append(rec)
    return write_segment(loc, block.segment, chunks(), records, int(info["image_size"]), tuple(data.inputs.shape[1:]),
                         int(desc["stored_dim"]), desc["stored_dtype"], {"dataset": block.dataset, "split": plan.split})


def commit_build(plan: BuildPlan | dict[str, Any], infos: Sequence[dict[str, Any]], progress: bool = False
                 ) -> ZarrLibrary:
    """Commit a planned build once every block is written: extend/train the index, create the next version.

    A new local store is renamed from its staging folder onto its URL only now (an ``--overwrite``
    replaces the old store at this point), so a killed build never leaves a store that opens.
    """
    plan = BuildPlan.from_dict(plan) if isinstance(plan, dict) else plan
    crash_point("shard")
    loc = Location(plan.url)
    by_name = {i["name"]: i for i in infos}
    missing = [b.segment for b in plan.blocks if b.segment not in by_name]
    if missing:
        raise PixelNNError(f"cannot commit: {len(missing)} block(s) not written: {few(missing, 3)}")
    for b in plan.blocks:
        if by_name[b.segment]["count"] != b.count:
            raise PixelNNError(f"cannot commit: segment {b.segment} has {by_name[b.segment]['count']} rows, "
                               f"planned {b.count}")
    info = loc.read_json(STORE_JSON)
    new = [{**by_name[b.segment], "removed": []} for b in plan.blocks]
    if plan.base_version:
        lib = ZarrLibrary.open(plan.url, plan.base_version)
        manifest = json.loads(json.dumps(lib.manifest))
        base_index, spec = lib.index, manifest["index"]
        base_index = _reducer_module().AnnIndex.read(loc.path(spec["file"]), mmap=False) if loc.local \
            else base_index
    else:
        manifest = {"count": 0, "segments": [], "datasets": [], "dim": int(info["descriptor"]["stored_dim"])}
        base_index, spec = None, None
    if not new and plan.base_version:
        return ZarrLibrary.open(plan.target)
    manifest["segments"] = manifest["segments"] + new
    manifest["datasets"] = manifest.get("datasets", []) + plan.datasets
    manifest["count"] = int(manifest["count"]) + sum(b.count for b in plan.blocks)
    number = (committed_versions(loc) or [0])[-1] + 1
    manifest["index"] = _build_index(loc, manifest, number, plan.index_memory, progress, spec=spec, base=base_index)
    _commit(loc, manifest, number)
    if plan.url != plan.target:  # a new local store: staging folder -> URL
        _publish(loc, Location(plan.target))
    return ZarrLibrary.open(plan.target, index_memory=plan.index_memory)


def _publish(staging: Location, target: Location) -> None:
    """Rename a committed local staging folder onto its target (an old store there is moved aside first to
    ``.NAME.old.PID.*``, then deleted: :func:`pixelnn.io.replace_dir`, undone by the next opener when killed
    between the two renames)."""
    final, built = Path(target.root), Path(staging.root)
    final.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(built, final)


def build_store(url: str | os.PathLike | None, model_dir: str | Path, data_dirs: Sequence[str | Path],
                progress: bool = True, **kwargs: Any) -> ZarrLibrary:
    """Build a new store in this process (the local engine): :func:`plan_build`, every :func:`write_block`,
    :func:`commit_build`, holding the writer lock of the target."""
    with store_lock(url if url is not None else Path(model_dir) / "library"):
        plan = plan_build(url, model_dir, data_dirs, progress=progress, **kwargs)
        infos = [write_block(plan, b, progress=progress) for b in plan.blocks]
        return commit_build(plan, infos, progress=progress)


# ------------------------------------------------------------------------------------------- upgrade
def upgrade_library(old: str | Path, new: str | os.PathLike, global_dims: int = 0, block_size: int = BLOCK_SIZE,
                    overwrite: bool = False, progress: bool = True, index_memory: int = INDEX_MEMORY) -> ZarrLibrary:
    """Convert a version-1 library (``.npy`` shards) into a chunked store, copying every live exemplar.

    With ``global_dims=0`` (the default) the conv5 descriptors are copied in full, so synthesis from the
    new store gives outputs identical to the old one; ``global_dims=512`` reduces them (a PCA fitted on
    the library), as new builds do.
    """
    with store_lock(new):
        return _upgrade_library(old, new, global_dims, block_size, overwrite, progress, index_memory)


def _upgrade_library(old: str | Path, new: str | os.PathLike, global_dims: int, block_size: int, overwrite: bool,
                     progress: bool, index_memory: int) -> ZarrLibrary:
    from tqdm.auto import tqdm

    from pixelnn.library import REPLACES, ExemplarLibrary

    src = ExemplarLibrary.open(old)
    target = Location(new)
    if target.local:
        recover(target.root)
    if target.exists() and target.listdir("") and not overwrite:
        raise PixelNNError(f"{target.url} already exists; pass --overwrite to replace it")
    if target.local and overwrite:
        check_replaceable(target.root, REPLACES, "library")
    work = Location(_staging_url(target)) if target.local else target
    if not target.local and overwrite:
        target.remove("")
    work.remove("")
    weights = (Path(src.root) / src.manifest["model"].get("weights", "regressor.safetensors")).read_bytes()
    n, full = len(src), src.dim
    dims = int(global_dims or 0)
    reduce = 0 < dims < full and min(n, REDUCER_FIT_MAX) >= 2 * dims
    desc = _descriptor_info(full, dims if reduce else 0)
    work.write_bytes(MODEL_FILE, weights)
    reducer = None
    if reduce:
        ann = _reducer_module()
        sample = np.unique(np.linspace(0, n - 1, min(n, REDUCER_FIT_MAX)).astype(np.int64))
        reducer = ann.PCAReducer.fit(src.take("global", sample), dims)
        data = reducer.to_bytes()
        work.write_bytes(REDUCER_FILE, data)
        desc.update(reducer_sha256=_sha256(data), reducer_fit_rows=int(len(sample)))
    model = src.manifest["model"]
    info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created": _now(), "task": src.task.to_dict(),
            "image_size": src.image_size, "descriptor": desc,
            "model": {**model, "weights": MODEL_FILE}, "upgraded_from": str(Path(old).resolve())}
    work.write_json(STORE_JSON, info)
    records = src.records
    entries = []
    with tqdm(total=n, desc="upgrade", unit="img", disable=not progress) as bar:
        for b, start in enumerate(range(0, n, block_size)):
            pos = np.arange(start, min(start + block_size, n))

            def chunks(pos=pos):
                for i in range(0, len(pos), SHARD_ROWS):
                    p = pos[i:i + SHARD_ROWS]
                    g = src.take("global", p)
                    g = reducer.transform(g) if reducer is not None else g
                    yield {"photos": src.take("photos", p), "stage1": src.take("stage1", p),
                           "inputs": src.take("inputs", p), "global": g.astype(desc["stored_dtype"])}
                    bar.update(len(p))

            recs = [records[i] for i in pos]
            datasets = sorted({str(r.get("dataset")) for r in recs})
            extra = {"dataset": datasets[0] if len(datasets) == 1 else None, "split": recs[0].get("split")}
            info_s = write_segment(work, f"v000001b{b:05d}", chunks(), recs, src.image_size,
                                   src._field_shape("inputs")[0] if n else (0,), desc["stored_dim"],
                                   desc["stored_dtype"], extra)
            entries.append({**info_s, "removed": []})
    manifest = {"count": n, "segments": entries, "datasets": list(src.manifest.get("datasets", [])),
                "dim": int(desc["stored_dim"])}
    manifest["index"] = _build_index(work, manifest, 1, index_memory, progress)
    _commit(work, manifest, 1)
    if work.url != target.url:
        _publish(work, target)
    return ZarrLibrary.open(target.url, index_memory=index_memory)
