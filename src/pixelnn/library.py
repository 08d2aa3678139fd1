"""The exemplar library: every training pair with its stage-1 output and global descriptor.

PixelNN's second stage matches a stage-1 output f(x) against the stage-1 outputs f(x_n) of the
training pairs (Dist(f(x), f(x_n)) compares stage-1 outputs) and copies pixels from the photos
y_n. The library stores, for every exemplar n:

- the photo y_n, (S, S, 3) uint8;
- the stage-1 output f(x_n), (S, S, 3) uint8, from :func:`pixelnn.models.regressor.predict`;
- the global descriptor of f(x_n), (D,) float32 (:func:`pixelnn.retrieval.global_descriptors`,
  D = 6400 for S = 96);
- the pair's record: ``{"id", "source", "labels", "dataset", "split"}``.

Layout (default ``MODEL_DIR/library``)::

    LIB_DIR/
      library.json              manifest, written last: format, version, task, descriptor, model
                                reference, live count, the list of shards and their tombstones
      regressor.safetensors     a copy of the stage-1 weights the library was built with
      shards/0000/              one shard per dataset added (never rewritten, except by compact())
        photos.npy              (n, S, S, 3) uint8
        stage1.npy              (n, S, S, 3) uint8
        global.npy              (n, D) float32
        records.jsonl           n JSON lines

Arrays are ``.npy`` read with ``allow_pickle=False`` and memory-mapped. Crash safety: a shard is
built under a temporary name and renamed into place, then ``library.json`` is replaced
atomically; the manifest alone says which shards and rows exist, so a crash at any point leaves
the previous library (a shard folder that no manifest lists is an orphan, deleted by the next
write, unless it is the temporary folder of a live writer). Removal appends the ids to their shard's
``removed`` list in the manifest (tombstones); :meth:`ExemplarLibrary.compact` rewrites the affected shards
without them. One writer at a time: every change holds :func:`pixelnn.io.writer_lock` of the folder (a
second writer waits for it, then reloads the manifest before it changes anything).

Positions 0..len-1 number the live exemplars in shard order then row order; they are what
:meth:`ExemplarLibrary.search` returns and what :meth:`ExemplarLibrary.select` produces. The library
implements the exemplar-store contract (:class:`pixelnn.store.ExemplarStore`): everything outside it
reads exemplars with ``take(field, positions)``, ``ids_of``, ``records_of``, ``position``, ``select``
and ``search``, and no shard is ever concatenated in memory.

The stage-1 outputs must all come from one model, so the library keeps its own copy of the
regressor weights (:meth:`ExemplarLibrary.load_model`); :meth:`ExemplarLibrary.add` uses that
copy even if the model directory has since been trained further.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from pixelnn.config import MODEL_FILES, TaskConfig
from pixelnn.data.dataset import SPLITS, Dataset
from pixelnn.devices import resolve_device
from pixelnn.errors import PixelNNError
from pixelnn.io import (atomic_dir, check_replaceable, check_sha256, config_from, crash_point, need, pid_alive, read_json,
                        read_jsonl, recover, recover_all, temp_owner, write_json, writer_lock)
from pixelnn.retrieval import (DESCRIPTOR_LAYER, DESCRIPTOR_NAME, INDEX_KINDS, GlobalIndex, descriptor_dim,
                               global_descriptors)
from pixelnn.store import check_field, check_positions, iter_field, labels_index, select_records
from pixelnn.store import few as _few

log = logging.getLogger(__name__)

FORMAT_NAME = "pixelnn-library"
FORMAT_VERSION = 1
MANIFEST = "library.json"
WEIGHTS = "regressor.safetensors"
SHARDS = "shards"
DEFAULT_DIRNAME = "library"
#: What ``--overwrite`` may replace: a library of either format (:func:`pixelnn.io.check_replaceable`).
REPLACES = ((MANIFEST, FORMAT_NAME), ("store.json", "pixelnn-store"))
#: The arrays of a shard (file stems).
_ARRAYS = ("photos", "stage1", "global", "inputs")
#: Rows processed per chunk while building a shard (bounds memory).
CHUNK = 256
#: An IVF index is trained on at most this many evenly spaced exemplars.
IVF_TRAIN_MAX = 50_000


class AddResult(NamedTuple):
    """What :meth:`ExemplarLibrary.add` did."""

    dataset: str
    added: int
    skipped: int  # ids already in the library (or repeated in the dataset)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _task_fields(task: TaskConfig) -> dict[str, Any]:
    """The fields of a task that change the inputs x (others are irrelevant for that task)."""
    fields = {"name": task.name, "size": task.size, "input_channels": task.input_channels}
    if task.name == "superres":
        fields["factor"] = task.factor
    elif task.name == "edges":
        fields.update(edge_method=task.edge_method, hed_scale=task.hed_scale)
    elif task.name == "normals":
        pass  # derived with fixed settings (pixelnn.normals)
    else:
        fields["direction"] = task.direction
    return fields


def _check_task(expected: TaskConfig, got: TaskConfig, what: str) -> None:
    a, b = _task_fields(expected), _task_fields(got)
    diffs = [f"{k} {b.get(k)!r} (library: {a[k]!r})" for k in a if a[k] != b.get(k)]
    if diffs:
        raise PixelNNError(f"{what} has a different task than the library: {'; '.join(diffs)}")


def _read_model(model_dir: Path) -> tuple[bytes, dict[str, Any]]:
    """The weights file's bytes (read once, so a training run replacing it cannot race) and config.json."""
    cfg_path = model_dir / MODEL_FILES.config
    weights = model_dir / MODEL_FILES.weights
    if not cfg_path.is_file():
        raise PixelNNError(f"{model_dir} is not a PixelNN model directory (no {MODEL_FILES.config}); "
                           f"train one with `pixelnn train DATA_DIR --out {model_dir}`")
    if not weights.is_file():
        raise PixelNNError(f"{model_dir} has no {MODEL_FILES.weights} yet; wait for the first checkpoint "
                           f"of `pixelnn train`")
    config = read_json(cfg_path, expect=dict)
    if "task" not in config:
        raise PixelNNError(f"{cfg_path} has no task; retrain the model with this version of pixelnn")
    config_from(TaskConfig, config["task"], cfg_path, "task")
    try:
        data = weights.read_bytes()
    except OSError as e:
        raise PixelNNError(f"cannot read {weights}: {e.strerror or e}") from None
    return data, config


def _load_regressor(path: Path, sha256: str | None = None):
    """The regressor at ``path``, refused when its file's sha256 is not the recorded ``sha256``."""
    from pixelnn.models.regressor import Regressor

    check_sha256(path, sha256, "weights", "the library's copy of the stage-1 model is damaged: rebuild the library "
                 "with `pixelnn index ... --overwrite`")
    return Regressor.load(path)


class _Shard:
    """One shard folder, memory-mapped, with its tombstones."""

    def __init__(self, root: Path, entry: dict[str, Any], size: int, dim: int):
        self.name = str(entry.get("name", ""))
        self.path = root / SHARDS / self.name
        self.count = int(entry.get("count", -1))
        self.arrays = {}
        for a in _ARRAYS:
            f = self.path / f"{a}.npy"
            try:
                self.arrays[a] = np.load(f, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise PixelNNError(f"library shard {self.path} is unreadable: {f.name} is missing") from None
            except (OSError, ValueError, EOFError) as e:
                raise PixelNNError(f"library shard {self.path} is unreadable: {f.name}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__} (truncated?)") from None
        self.records = read_jsonl(self.path / "records.jsonl", "library shard records")
        expect = {"photos": ((self.count, size, size, 3), np.uint8), "stage1": ((self.count, size, size, 3), np.uint8),
                  "global": ((self.count, dim), np.float32)}
        for a, (shape, dtype) in expect.items():
            arr = self.arrays[a]
            if arr.shape != shape or arr.dtype != dtype:
                raise PixelNNError(f"library shard {self.path} is corrupt: {a}.npy is {arr.dtype}{list(arr.shape)}, "
                                   f"expected {np.dtype(dtype)}{list(shape)}")
        if self.arrays["inputs"].ndim != 4 or len(self.arrays["inputs"]) != self.count:
            raise PixelNNError(f"library shard {self.path} is corrupt: inputs.npy is {list(self.arrays['inputs'].shape)}")
        if not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in self.records):
            raise PixelNNError(f"library shard {self.path} is corrupt: a record without an id")
        if len(self.records) != self.count:
            raise PixelNNError(f"library shard {self.path} is corrupt: {len(self.records)} records, "
                               f"expected {self.count}")
        self.removed = set(entry.get("removed", []))
        self.live = np.array([i for i, r in enumerate(self.records) if r["id"] not in self.removed], np.int64)


class ExemplarLibrary:
    """The exemplar store of a trained model; see the module docstring for the layout.

    Create one with :meth:`build`, load one with :meth:`open`.

    Parameters
    ----------
    root : path
        The library folder (holding ``library.json``).
    index : {'flat', 'ivf'}
        Kind of :class:`pixelnn.retrieval.GlobalIndex` that :meth:`search` builds (on first use).
    nlist, nprobe : int, optional
        IVF options (see :class:`~pixelnn.retrieval.GlobalIndex`).
    """

    def __init__(self, root: str | Path, index: str = "flat", nlist: int | None = None, nprobe: int | None = None):
        if index not in INDEX_KINDS:
            raise PixelNNError(f"invalid index kind {index!r}; valid: {', '.join(INDEX_KINDS)}")
        self.root = Path(root)
        self.index_kind, self.nlist, self.nprobe = index, nlist, nprobe
        self._load()

    # ---------------------------------------------------------------------------------- loading
    @classmethod
    def open(cls, lib_dir: str | Path, index: str = "flat", nlist: int | None = None,
             nprobe: int | None = None) -> "ExemplarLibrary":
        """Load a library folder (arrays memory-mapped); raises PixelNNError if it is missing or corrupt."""
        return cls(lib_dir, index=index, nlist=nlist, nprobe=nprobe)

    def _load(self) -> None:
        recover(self.root)  # a replacement killed between its two renames is undone here
        path = self.root / MANIFEST
        if not path.is_file():
            raise PixelNNError(f"{self.root} is not a PixelNN library (no {MANIFEST}); build one with "
                               f"`pixelnn index DATA_DIR --model MODEL_DIR`")
        manifest = read_json(path, expect=dict)
        if manifest.get("format") != FORMAT_NAME:
            raise PixelNNError(f"{path} is not a {FORMAT_NAME} manifest")
        if not isinstance(manifest.get("version"), int) or manifest["version"] > FORMAT_VERSION:
            raise PixelNNError(f"{path} has format version {manifest.get('version')!r}; this PixelNN reads up to "
                               f"{FORMAT_VERSION}: upgrade pixelnn")
        try:
            desc = need(manifest, "descriptor", path, dict)
            self.task = config_from(TaskConfig, need(manifest, "task", path, dict), path, "task")
            self.image_size = int(need(manifest, "image_size", path, int))
            self.dim = int(need(desc, "dim", f"{path}: descriptor", int))
            entries = list(need(manifest, "shards", path, list))
            count = int(need(manifest, "count", path, int))
            need(manifest, "model", path, dict)
            if not isinstance(manifest.get("datasets", []), list):
                need(manifest, "datasets", path, list)
            for i, e in enumerate(entries):
                where = f"{path}: shards[{i}]"
                need(e, "name", where, str)
                need(e, "count", where, int)
                if not isinstance(e.get("removed", []), list):
                    need(e, "removed", where, list)
        except (KeyError, TypeError, ValueError) as e:
            raise PixelNNError(f"{path} is corrupt: missing or bad field {e}") from None
        if desc.get("name") != DESCRIPTOR_NAME:
            raise PixelNNError(f"{self.root} uses descriptor {desc.get('name')!r}; this PixelNN uses "
                               f"{DESCRIPTOR_NAME!r}: rebuild it with `pixelnn index ... --overwrite`")
        self.manifest: dict[str, Any] = manifest
        self._shards = [_Shard(self.root, e, self.image_size, self.dim) for e in entries]
        n = sum(len(s.live) for s in self._shards)
        if n != count:
            raise PixelNNError(f"{path} is corrupt: count {count} but the shards hold {n} live exemplars")
        self._records = tuple(s.records[i] for s in self._shards for i in s.live)
        self._ids = tuple(r["id"] for r in self._records)
        self._pos = {rid: p for p, rid in enumerate(self._ids)}
        if len(self._pos) != len(self._ids):
            raise PixelNNError(f"{self.root} is corrupt: repeated exemplar ids")
        # position p lives in shard s = searchsorted(starts, p, "right") - 1, row live[s][p - starts[s]]
        self._starts = np.cumsum([0] + [len(s.live) for s in self._shards]).astype(np.int64)
        self._index: GlobalIndex | None = None

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, out_dir: str | Path | None, model_dir: str | Path, data_dirs: list[str | Path],
              split: str = "train", progress: bool = True, overwrite: bool = False, batch_size: int = 64,
              id_prefix: str | None = None, device: Any = "cpu") -> "ExemplarLibrary":
        """Build a library from the ``split`` pairs of prepared datasets, with a trained stage-1 model.

        Parameters
        ----------
        out_dir : path or None
            The library folder; None means ``MODEL_DIR/library``.
        model_dir : path
            A trained model (``regressor.safetensors`` + ``config.json``); its weights are copied in.
        data_dirs : list of path
            Prepared datasets, all with the model's task; one shard each. Ids already added (by an
            earlier dataset of the list) are skipped.
        split : {'train', 'val', 'test'}
        progress : bool
            tqdm progress bars.
        overwrite : bool
            Replace an existing library (only once the new one is complete).
        batch_size : int
            Images per forward pass of the regressor and of AlexNet.
        id_prefix : str, optional
            Prepended to every record id (to keep datasets with clashing ids apart).
        device : str or torch.device
            Where the regressor and AlexNet run (``auto``, ``cpu``, ``cuda[:N]``, ``mps``).
        """
        model_dir = Path(model_dir)
        out_dir = Path(out_dir) if out_dir is not None else model_dir / DEFAULT_DIRNAME
        with writer_lock(out_dir, "library"):
            return cls._build(out_dir, model_dir, data_dirs, split, progress, overwrite, batch_size, id_prefix, device)

    @classmethod
    def _build(cls, out_dir: Path, model_dir: Path, data_dirs: list[str | Path], split: str, progress: bool,
               overwrite: bool, batch_size: int, id_prefix: str | None, device: Any) -> "ExemplarLibrary":
        recover(out_dir)
        if out_dir.exists() and not overwrite:
            raise PixelNNError(f"{out_dir} already exists; add datasets to it with `--add`, or pass --overwrite")
        check_replaceable(out_dir, REPLACES, "library")
        if not data_dirs:
            raise PixelNNError("no datasets given to build the library from")
        weights, config = _read_model(model_dir)
        task = config_from(TaskConfig, config["task"], model_dir / MODEL_FILES.config, "task")
        datasets = [Dataset(d) for d in data_dirs]
        for ds in datasets:  # fail before any work
            _check_task(task, ds.task, f"dataset {ds.root}")
        manifest = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "created": _now(), "updated": _now(),
            "task": task.to_dict(), "image_size": task.size,
            "descriptor": {"name": DESCRIPTOR_NAME, "layer": DESCRIPTOR_LAYER, "dim": descriptor_dim(task.size),
                           "normalised": "l2", "similarity": "inner product"},
            "model": {"path": str(model_dir.resolve()), "weights": WEIGHTS,
                      "weights_sha256": hashlib.sha256(weights).hexdigest(),
                      "regressor": config.get("regressor"), "trained_on": (config.get("dataset") or {}).get("path")},
            "count": 0, "shards": [], "datasets": [],
        }
        with atomic_dir(out_dir, overwrite=overwrite, replaces=REPLACES, what="library") as tmp:
            (tmp / WEIGHTS).write_bytes(weights)
            (tmp / SHARDS).mkdir()
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            lib = cls(tmp)
            model = lib.load_model(device)
            for ds in datasets:
                lib._add_dataset(ds, split, model, progress=progress, batch_size=batch_size, id_prefix=id_prefix)
        log.info("built %s: %d exemplars", out_dir, len(lib))
        return cls(out_dir)

    def load_model(self, device: Any = "cpu"):
        """The library's copy of the stage-1 regressor (:class:`pixelnn.models.regressor.Regressor`), in eval mode,
        on ``device``."""
        model = self.manifest["model"]
        return _load_regressor(self.root / str(model.get("weights", WEIGHTS)),
                               model.get("weights_sha256")).to(resolve_device(device))

    def add(self, data_dir: str | Path, split: str = "train", progress: bool = True, batch_size: int = 64,
            id_prefix: str | None = None, device: Any = "cpu") -> AddResult:
        """Add the ``split`` pairs of another prepared dataset, as one new shard.

        Pairs whose id is already in the library (or repeated in the dataset) are skipped and
        counted; a removed id can be added again. The dataset's task must match the library's.
        Stage-1 outputs are computed with the library's own copy of the regressor.

        Returns
        -------
        AddResult
            ``(dataset, added, skipped)``.
        """
        ds = Dataset(data_dir)
        _check_task(self.task, ds.task, f"dataset {ds.root}")
        with writer_lock(self.root, "library"):
            self._load()  # what another writer committed while this one waited
            return self._add_dataset(ds, split, self.load_model(device), progress=progress, batch_size=batch_size,
                                     id_prefix=id_prefix)

    def _add_dataset(self, ds: Dataset, split: str, model, progress: bool, batch_size: int,
                     id_prefix: str | None) -> AddResult:
        from tqdm.auto import tqdm

        from pixelnn.models.regressor import predict

        if split not in SPLITS:
            raise PixelNNError(f"invalid split {split!r}; valid: {', '.join(SPLITS)}")
        data = ds.split(split)
        size = self.image_size
        if data.photos.shape[1:] != (size, size, 3):
            raise PixelNNError(f"dataset {ds.root} has {list(data.photos.shape[1:])} photos; the library holds "
                               f"{[size, size, 3]}")
        if data.inputs.shape[-1] != model.config.in_channels:
            raise PixelNNError(f"dataset {ds.root} has {data.inputs.shape[-1]}-channel inputs; the library's "
                               f"model takes {model.config.in_channels}")
        prefix = id_prefix or ""
        seen = set(self._pos)
        keep: list[int] = []
        for j, r in enumerate(data.records):
            rid = prefix + str(r["id"])
            if rid not in seen:
                seen.add(rid)
                keep.append(j)
        skipped = len(data.records) - len(keep)
        dataset_path = str(ds.root.resolve())
        if skipped:
            log.info("%s: skipping %d of %d pairs whose ids are already in the library", ds.root, skipped,
                     len(data.records))
        if not keep:
            return AddResult(dataset_path, 0, skipped)

        self._remove_orphans()
        name = self._next_shard_name()
        n, dim = len(keep), self.dim
        rows = np.asarray(keep, np.int64)
        contiguous = n == len(data.records)
        with atomic_dir(self.root / SHARDS / name) as tmp:
            out = {"photos": np.lib.format.open_memmap(tmp / "photos.npy", "w+", np.uint8, (n, size, size, 3)),
                   "stage1": np.lib.format.open_memmap(tmp / "stage1.npy", "w+", np.uint8, (n, size, size, 3)),
                   "global": np.lib.format.open_memmap(tmp / "global.npy", "w+", np.float32, (n, dim)),
                   "inputs": np.lib.format.open_memmap(tmp / "inputs.npy", "w+", np.uint8, (n, *data.inputs.shape[1:]))}
            with tqdm(total=n, desc=f"library {ds.root.name}/{split}", unit="img", disable=not progress,
                      dynamic_ncols=True) as bar:
                for i in range(0, n, CHUNK):
                    sel = slice(i, min(i + CHUNK, n)) if contiguous else rows[i:i + CHUNK]
                    photos, inputs = np.asarray(data.photos[sel]), np.asarray(data.inputs[sel])
                    stage1 = predict(model, inputs, batch_size)  # (B, S, S, 3) uint8
                    out["photos"][i:i + len(photos)] = photos
                    out["stage1"][i:i + len(photos)] = stage1
                    out["global"][i:i + len(photos)] = global_descriptors(stage1, batch_size,
                                                                          device=next(model.parameters()).device)
                    out["inputs"][i:i + len(photos)] = inputs
                    bar.update(len(photos))
            for a in _ARRAYS:
                out[a].flush()
            del out  # close the memory maps before the folder is renamed
            with open(tmp / "records.jsonl", "w") as f:
                for j in keep:
                    r = data.records[j]
                    rec = {"id": prefix + str(r["id"]), "source": r.get("source"), "labels": r.get("labels", {}),
                           "dataset": dataset_path, "split": split}
                    if prefix:
                        rec["dataset_id"] = r["id"]
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
        crash_point("shard")
        manifest = json.loads(json.dumps(self.manifest))
        manifest["shards"].append({"name": name, "count": n, "dataset": dataset_path, "split": split, "removed": []})
        manifest["datasets"].append({"path": dataset_path, "split": split, "added": n, "skipped": skipped,
                                     "time": _now()})
        manifest["count"] = len(self) + n
        self._commit(manifest)
        log.info("added %d exemplars from %s (%d skipped)", n, ds.root, skipped)
        return AddResult(dataset_path, n, skipped)

    def _commit(self, manifest: dict[str, Any]) -> None:
        """Write the manifest (the commit point) and reload."""
        manifest["updated"] = _now()
        write_json(self.root / MANIFEST, manifest)
        self._load()  # drops the cached arrays and index

    def _next_shard_name(self) -> str:
        names = [e["name"] for e in self.manifest["shards"]]
        shard_dir = self.root / SHARDS
        if shard_dir.is_dir():
            names += [p.name for p in shard_dir.iterdir()]
        nums = [int(x) for x in names if x.isdigit()]
        return f"{max(nums, default=-1) + 1:04d}"

    def _remove_orphans(self) -> None:
        """Delete shard folders no manifest lists (left by a crash between a shard and its manifest), never the
        temporary folder of a live writer (the caller holds the writer lock: there should be none)."""
        shard_dir = self.root / SHARDS
        shard_dir.mkdir(exist_ok=True)
        recover_all(self.root)  # temporary files (library.json...) of dead writers
        recover_all(shard_dir)  # temporary folders of dead writers
        listed = {e["name"] for e in self.manifest["shards"]}
        for p in shard_dir.iterdir():
            owner = temp_owner(p)
            if owner is not None and pid_alive(owner):
                log.warning("%s is being written by process %d: not removed", p, owner)
                continue
            if p.name not in listed:
                log.info("removing orphan %s", p)
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def remove(self, ids: Iterable[str]) -> int:
        """Remove exemplars by id (tombstones in the manifest; :meth:`compact` reclaims the space).

        Raises PixelNNError, removing nothing, if any id is not in the library. Returns the number removed.
        """
        with writer_lock(self.root, "library"):
            self._load()  # what another writer committed while this one waited
            return self._remove(ids)

    def _remove(self, ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(str(i) for i in ([ids] if isinstance(ids, str) else ids)))
        unknown = [i for i in ids if i not in self._pos]
        if unknown:
            raise PixelNNError(f"{len(unknown)} unknown exemplar id(s): {_few(unknown, 3)}; "
                               f"the library has {len(self)}, e.g. {_few(self._ids[:3], 3)}")
        if not ids:
            return 0
        owner = {}
        for s, shard in enumerate(self._shards):
            for i in shard.live:
                owner[shard.records[i]["id"]] = s
        manifest = json.loads(json.dumps(self.manifest))
        for rid in ids:
            manifest["shards"][owner[rid]].setdefault("removed", []).append(rid)
        manifest["count"] = len(self) - len(ids)
        self._commit(manifest)
        log.info("removed %d exemplars", len(ids))
        return len(ids)

    def compact(self) -> int:
        """Rewrite the shards that have removed rows without them; returns the number of rows dropped.

        Positions are unchanged. New shards are written first, then the manifest, then the old
        folders are deleted, so a crash leaves a loadable library.
        """
        with writer_lock(self.root, "library"):
            self._load()  # what another writer committed while this one waited
            return self._compact()

    def _compact(self) -> int:
        todo = [(k, s) for k, s in enumerate(self._shards) if len(s.live) < s.count]
        if not todo:
            return 0
        self._remove_orphans()
        manifest = json.loads(json.dumps(self.manifest))
        old, dropped = [], 0
        for k, shard in todo:
            entry = manifest["shards"][k]
            dropped += shard.count - len(shard.live)
            old.append(shard.path)
            if len(shard.live) == 0:
                entry["drop"] = True
                continue
            name = self._next_shard_name()
            with atomic_dir(self.root / SHARDS / name) as tmp:
                for a in _ARRAYS:
                    np.save(tmp / f"{a}.npy", np.ascontiguousarray(shard.arrays[a][shard.live]), allow_pickle=False)
                with open(tmp / "records.jsonl", "w") as f:
                    for i in shard.live:
                        f.write(json.dumps(shard.records[i], sort_keys=True) + "\n")
            entry.update(name=name, count=len(shard.live), removed=[])
        manifest["shards"] = [e for e in manifest["shards"] if not e.get("drop")]
        self._commit(manifest)
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        log.info("compacted %d shards, dropped %d rows", len(todo), dropped)
        return dropped

    # ---------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"ExemplarLibrary({str(self.root)!r}, n={len(self)}, shards={len(self._shards)}, "
                f"task={self.task.name}, size={self.image_size}, dim={self.dim})")

    @property
    def ids(self) -> tuple[str, ...]:
        """Exemplar ids in position order (not a copy: an immutable tuple)."""
        return self._ids

    @property
    def records(self) -> tuple[dict[str, Any], ...]:
        """Records ``{"id", "source", "labels", "dataset", "split"}`` in position order."""
        return self._records

    @property
    def pixel_cache_dir(self) -> Path:
        """Where exemplar pixel descriptors are cached (``LIB_DIR/pixel_cache``)."""
        return self.root / "pixel_cache"

    @property
    def model_dir(self) -> Path:
        """The model directory the library was built from (its weights are copied in the library)."""
        return Path(self.manifest["model"]["path"])

    def take(self, field: str, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of an exemplar field at some positions, in the order given (the store contract,
        :class:`pixelnn.store.ExemplarStore`).

        Each shard's memory map is read only at the rows asked for (in increasing order); shards are
        never concatenated.

        Parameters
        ----------
        field : {'photos', 'stage1', 'inputs', 'global'}
            Photos y_n (M, S, S, 3) uint8, stage-1 outputs f(x_n) (M, S, S, 3) uint8, inputs x_n
            (M, s, s, C) uint8, or global descriptors of f(x_n) (M, D) float32 with unit rows.
        positions : sequence of int
            Live positions in [0, len).

        Returns
        -------
        ndarray, (M, ...)
            A fresh array (writable; not a view of the memory maps).
        """
        check_field(field)
        pos = check_positions(positions, len(self))
        shape, dtype = self._field_shape(field)
        out = np.empty((len(pos), *shape), dtype)
        if len(pos) == 0:
            return out
        shard = np.searchsorted(self._starts, pos, side="right") - 1  # (M,)
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            sh = self._shards[s]
            rows = sh.live[pos[at] - self._starts[s]]
            order = np.argsort(rows, kind="stable")  # read the memory map front to back
            out[at[order]] = sh.arrays[field][rows[order]]
        return out

    def _field_shape(self, field: str) -> tuple[tuple[int, ...], np.dtype]:
        if field == "global":
            return (self.dim,), np.dtype(np.float32)
        if field == "inputs":
            shards = [s for s in self._shards if len(s.live)]
            if not shards:
                raise PixelNNError("the library is empty: it has no exemplar inputs")
            a = shards[0].arrays["inputs"]
            return tuple(a.shape[1:]), a.dtype
        return (self.image_size, self.image_size, 3), np.dtype(np.uint8)

    def ids_of(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        """Exemplar ids at some positions, in the order given."""
        return [self._ids[p] for p in check_positions(positions, len(self))]

    def records_of(self, positions: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """Records at some positions, in the order given."""
        return [self._records[p] for p in check_positions(positions, len(self))]

    def position(self, exemplar_id: str) -> int:
        """Position of an exemplar id; PixelNNError if unknown."""
        try:
            return self._pos[exemplar_id]
        except KeyError:
            raise PixelNNError(f"unknown exemplar id {exemplar_id!r}; the library has {len(self)}, "
                               f"e.g. {_few(self._ids[:3], 3)}") from None

    def labels_index(self) -> dict[str, dict[str, int]]:
        """``{label key: {value: count}}`` over the live exemplars (values as str, most frequent first)."""
        return labels_index(self._records)

    def select(self, where: dict[str, list[str] | str] | None = None, ids: Sequence[str] | None = None) -> np.ndarray:
        """Positions of the exemplars matching label constraints and/or an id list.

        Parameters
        ----------
        where : dict of str -> list of str, optional
            ``{label key: allowed values}``: AND across keys, OR within a key's values. A bare
            string is a one-value list. Unknown keys or values raise PixelNNError.
        ids : list of str, optional
            Only these exemplars (unknown ids raise PixelNNError).

        Returns
        -------
        ndarray, (M,) int64
            Sorted positions (all positions when both are None), usable as ``allowed=`` in :meth:`search`.
        """
        return select_records(self._records, self._pos, where, ids)

    # ---------------------------------------------------------------------------------- search
    @property
    def index(self) -> GlobalIndex:
        """The :class:`~pixelnn.retrieval.GlobalIndex` over the global descriptors, built on first use, shard by shard."""
        if self._index is None:
            index = GlobalIndex(self.dim, self.index_kind, nlist=self.nlist, nprobe=self.nprobe)
            n = len(self)
            if n and self.index_kind == "ivf":  # trained once, on up to IVF_TRAIN_MAX evenly spaced exemplars
                index.train(self.take("global", np.unique(np.linspace(0, n - 1, min(n, IVF_TRAIN_MAX)).astype(np.int64))))
            for rows in iter_field(self, "global", CHUNK * 16):  # shard by shard, a chunk at a time
                index.add(rows)
            self._index = index
        return self._index

    def search(self, query_desc: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Global nearest exemplars of query descriptors (of stage-1 outputs f(x)).

        Parameters
        ----------
        query_desc : ndarray, (Q, D) float32
            From :func:`pixelnn.retrieval.global_descriptors` of f(x).
        k : int
        allowed : ndarray of positions, optional
            Restrict to these positions (e.g. from :meth:`select`).

        Returns
        -------
        D : ndarray, (Q, k) float32
            Cosine similarities, decreasing; ``-inf`` where fewer than k exemplars are available.
        I : ndarray, (Q, k) int64
            Positions; ``-1`` in the padded columns.
        """
        return self.index.search(query_desc, k, allowed)

    def disk_bytes(self) -> int:
        """Bytes on disk of the library folder (manifest, weights copy and all shards)."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def summary(self) -> str:
        """One line: size, shards, tombstones, descriptor and disk use."""
        removed = sum(s.count - len(s.live) for s in self._shards)
        datasets = sorted({e.get("dataset") for e in self.manifest["shards"]})
        return (f"{self.root}: {len(self)} exemplars from {len(datasets)} dataset(s) in {len(self._shards)} "
                f"shard(s){f' ({removed} removed, not yet compacted)' if removed else ''}; "
                f"{self.image_size}x{self.image_size} images, {DESCRIPTOR_NAME} {self.dim}-d descriptors; "
                f"{self.disk_bytes() / 2**20:.1f} MiB on disk")
