"""The on-disk format of a prepared dataset (``pixelnn prepare ... --out DATA_DIR``).

Layout::

    DATA_DIR/
      dataset.json              manifest: format version, task config, counts, label keys, skips
      preview.png               a grid of (input, photo) pairs from the train split
      train/ val/ test/
        photos.npy              (N, S, S, 3) uint8   the photos y_n
        inputs.npy              (N, s, s, C) uint8   the inputs x_n (C=1 for edges, 3 otherwise)
        masks.npy               (N, s, s) bool       only for tasks whose inputs have a mask (normals:
                                                     the face); the manifest then says "masks": true
        records.jsonl           one JSON object per pair: {"id", "source", "labels": {...}}

Arrays are plain ``.npy`` (loaded with ``allow_pickle=False``, memory-mapped), so a dataset
never executes code when read. The whole directory is built under a temporary name and renamed
into place, so it is never seen half-written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pixelnn.config import TaskConfig
from pixelnn.errors import PixelNNError
from pixelnn.io import atomic_dir, config_from, need, read_json, read_jsonl, recover, save_image

FORMAT_NAME = "pixelnn-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
#: What ``--overwrite`` may replace: a dataset folder (:func:`pixelnn.io.check_replaceable`).
REPLACES = (("dataset.json", FORMAT_NAME),)


@dataclass
class SplitData:
    """One split: aligned photos, inputs and records.

    Attributes
    ----------
    photos : ndarray, (N, S, S, 3) uint8
    inputs : ndarray, (N, s, s, C) uint8
    records : list of dict
        ``{"id": str, "source": str, "labels": dict}`` per pair.
    masks : ndarray, (N, s, s) bool, optional
        Where each input is defined (the ``normals`` task's face masks); None for other tasks.
    """

    photos: np.ndarray
    inputs: np.ndarray
    records: list[dict[str, Any]] = field(default_factory=list)
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.photos)
        if len(self.inputs) != n or len(self.records) != n:
            raise ValueError(f"split arrays disagree: {n} photos, {len(self.inputs)} inputs, "
                             f"{len(self.records)} records")
        if self.masks is not None and tuple(self.masks.shape) != (n, *self.inputs.shape[1:3]):
            raise ValueError(f"masks must be (N, s, s) = {(n, *self.inputs.shape[1:3])}, got {self.masks.shape}")
        if self.photos.ndim != 4 or self.photos.shape[-1] != 3:
            raise ValueError(f"photos must be (N, S, S, 3), got {self.photos.shape}")
        if self.inputs.ndim != 4:
            raise ValueError(f"inputs must be (N, s, s, C), got {self.inputs.shape}")

    def __len__(self) -> int:
        return len(self.photos)


def assign_split(item_id: str, val_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """Deterministic split from a stable hash of the item's id (independent of file order).

    Parameters
    ----------
    item_id : str
        A stable identifier, e.g. the path of the image inside its source.
    val_fraction, test_fraction : float
        Expected fractions of the val and test splits.
    """
    h = int.from_bytes(hashlib.sha1(item_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def write_dataset(out_dir: str | Path, task: TaskConfig, splits: dict[str, SplitData], *,
                  source: str, extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a prepared dataset atomically.

    Parameters
    ----------
    out_dir : path
        Destination DATA_DIR.
    task : TaskConfig
        How inputs relate to photos.
    splits : dict of str -> SplitData
        Keys among ``train``, ``val``, ``test``; missing splits are written empty.
    source : str
        Where the photos came from (recorded in the manifest).
    extra : dict, optional
        Merged into the manifest (e.g. ``{"skipped": {...}}``).
    overwrite : bool
        Replace an existing dataset (only once the new one is complete).
    """
    out_dir = Path(out_dir)
    total = sum(len(s) for s in splits.values())
    if total == 0:
        raise PixelNNError("no usable images: nothing to write")
    label_keys = sorted({k for s in splits.values() for r in s.records for k in r.get("labels", {})})
    some = next(s for s in splits.values() if len(s))
    with_masks = some.masks is not None
    if any((s.masks is not None) != with_masks for s in splits.values()):
        raise ValueError("either every split has masks or none has")
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "task": task.to_dict(),
        "photo_shape": list(some.photos.shape[1:]),
        "input_shape": list(some.inputs.shape[1:]),
        "counts": {name: len(splits[name]) if name in splits else 0 for name in SPLITS},
        "label_keys": label_keys,
    }
    if with_masks:
        manifest["masks"] = True
    manifest.update(extra or {})
    with atomic_dir(out_dir, overwrite=overwrite, replaces=REPLACES, what="dataset") as tmp:
        for name in SPLITS:
            d = tmp / name
            d.mkdir()
            split = splits.get(name)
            if split is None:
                split = SplitData(np.zeros((0, *some.photos.shape[1:]), np.uint8),
                                  np.zeros((0, *some.inputs.shape[1:]), np.uint8), [],
                                  np.zeros((0, *some.inputs.shape[1:3]), bool) if with_masks else None)
            np.save(d / "photos.npy", np.ascontiguousarray(split.photos, dtype=np.uint8), allow_pickle=False)
            np.save(d / "inputs.npy", np.ascontiguousarray(split.inputs, dtype=np.uint8), allow_pickle=False)
            if with_masks:
                np.save(d / "masks.npy", np.ascontiguousarray(split.masks, dtype=bool), allow_pickle=False)
            with open(d / "records.jsonl", "w") as f:
                for r in split.records:
                    f.write(json.dumps(r, sort_keys=True) + "\n")
        preview_split = splits.get("train") if splits.get("train") is not None and len(splits["train"]) else some
        save_image(tmp / "preview.png", pair_grid(preview_split.inputs[:16], preview_split.photos[:16]))
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


class Dataset:
    """A prepared dataset on disk. ``Dataset(DATA_DIR).split("train")`` returns a :class:`SplitData`."""

    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir)
        recover(self.root)  # an interrupted `prepare --overwrite` is undone here
        path = self.root / "dataset.json"
        if not path.is_file():
            raise PixelNNError(f"{self.root} is not a PixelNN dataset (no dataset.json); create one with `pixelnn prepare`")
        self.manifest: dict[str, Any] = read_json(path, expect=dict)
        if self.manifest.get("format") != FORMAT_NAME:
            raise PixelNNError(f"{path} is not a {FORMAT_NAME} manifest")
        version = self.manifest.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            need(self.manifest, "version", path, int)
        if version > FORMAT_VERSION:
            raise PixelNNError(f"{path} has format version {version}; this PixelNN reads up to "
                               f"{FORMAT_VERSION}: upgrade pixelnn")
        self.task = config_from(TaskConfig, need(self.manifest, "task", path, dict), path, "task")

    def split(self, name: str, mmap: bool = True) -> SplitData:
        """Load one split (memory-mapped by default)."""
        if name not in SPLITS:
            raise PixelNNError(f"invalid split {name!r}; valid: {', '.join(SPLITS)}")
        d = self.root / name
        mode = "r" if mmap else None
        arrays = {}
        for a in ("photos", "inputs", "masks") if self.manifest.get("masks") else ("photos", "inputs"):
            f = d / f"{a}.npy"
            try:
                arrays[a] = np.load(f, mmap_mode=mode, allow_pickle=False)
            except FileNotFoundError:
                raise PixelNNError(f"cannot read split {name!r} of {self.root}: {f} is missing") from None
            except (OSError, ValueError, EOFError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise PixelNNError(f"cannot read split {name!r} of {self.root}: {f}: {msg} (truncated or damaged?)") from None
        records = read_jsonl(d / "records.jsonl", "dataset records")
        photos, inputs, masks = arrays["photos"], arrays["inputs"], arrays.get("masks")
        s, c = self.task.input_size, self.task.input_channels
        expect = {"photos": ((self.task.size, self.task.size, 3), np.uint8), "inputs": ((s, s, c), np.uint8),
                  "masks": ((s, s), np.bool_)}
        for a, arr in arrays.items():
            shape, dtype = expect[a]
            if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape or arr.dtype != dtype:
                raise PixelNNError(f"{d / (a + '.npy')} is {arr.dtype}{list(arr.shape)}, expected {np.dtype(dtype)}"
                                   f"[N, {', '.join(map(str, shape))}] for the task in {self.root / 'dataset.json'}")
            if len(arr) != len(records):
                raise PixelNNError(f"split {name!r} of {self.root} is damaged: {a}.npy holds {len(arr)} rows but "
                                   f"records.jsonl {len(records)}")
        bad = next((i for i, r in enumerate(records) if "id" not in r), None)
        if bad is not None:
            raise PixelNNError(f"{d / 'records.jsonl'}: record {bad + 1} has no id")
        return SplitData(photos, inputs, records, masks)

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, task={self.task.name}, counts={self.manifest.get('counts')})"


def to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 with C in {1, 3} -> (N, H, W, 3)."""
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return images


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of (N, h, w, C) to (N, size, size, C), for display only."""
    n, h, w, c = images.shape
    if h == size and w == size:
        return images
    yi = (np.arange(size) * h // size).clip(0, h - 1)
    xi = (np.arange(size) * w // size).clip(0, w - 1)
    return images[:, yi][:, :, xi]


def image_grid(rows: Iterable[np.ndarray], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile rows of images: ``rows`` is a sequence of (N, S, S, 3) uint8 arrays, one per row.

    All images are resized (nearest) to the largest side so inputs and photos line up.
    """
    rows = [to_rgb(np.asarray(r)) for r in rows]
    size = max(r.shape[1] for r in rows)
    cols = max(len(r) for r in rows)
    h = len(rows) * (size + pad) + pad
    w = cols * (size + pad) + pad
    grid = np.full((h, w, 3), fill, np.uint8)
    for i, r in enumerate(rows):
        r = resize_nearest(r, size)
        for j, im in enumerate(r):
            y, x = pad + i * (size + pad), pad + j * (size + pad)
            grid[y:y + size, x:x + size] = im
    return grid


def pair_grid(inputs: np.ndarray, photos: np.ndarray, per_row: int = 8) -> np.ndarray:
    """Preview grid: alternating rows of inputs and their photos."""
    rows = []
    for i in range(0, len(photos), per_row):
        rows += [inputs[i:i + per_row], photos[i:i + per_row]]
    return image_grid(rows)
