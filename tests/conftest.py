"""Shared fixtures: tiny synthetic datasets, and the path to ../shared/data when present."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pixelnn.config import TaskConfig
from pixelnn.data.dataset import SplitData, write_dataset
from pixelnn.tasks import area_downsample


def _resolve_anyio_lazy_imports() -> None:
    """Import every module anyio loads lazily, now, in the main thread.

    anyio imports its submodules on first attribute access, and pytest rewrites anyio's modules (anyio
    is a pytest plugin). A first access from a server or client thread in the web tests then parses
    a module while another thread parses too, which CPython 3.11.7's parser does not survive
    (``SystemError: AST constructor recursion depth mismatch``, python/cpython#106905).
    """
    try:
        import anyio
    except ImportError:
        return
    for name in dir(anyio):
        try:
            getattr(anyio, name)
        except Exception:  # noqa: BLE001 - a name that does not resolve is not ours to fix
            pass


_resolve_anyio_lazy_imports()

def shared_data_dir() -> Path | None:
    """``../shared/data`` next to the repository (or $PIXELNN_SHARED_DATA), or None when absent."""
    env = os.environ.get("PIXELNN_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent")
    return path


@pytest.fixture
def client_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir for a test's gradio_client: it stages every download in a new folder of the temp dir
    (``tempfile.gettempdir()/<40 hex>``) and leaves the folder behind; these land in ``tmp_path`` instead."""
    d = tmp_path / "client-downloads"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def synthetic_photos(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random colour blobs on a light background: (n, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        img = np.full((size, size, 3), 0.9, np.float32)
        for _ in range(3):
            cy, cx, r = rng.random(), rng.random(), 0.1 + 0.25 * rng.random()
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
            img[mask] = rng.random(3)
        out[i] = img
    return (out * 255).astype(np.uint8)


@pytest.fixture
def tiny_superres_dataset(tmp_path: Path) -> Path:
    """A 48/8/8 superres dataset of 32x32 photos with 4x4 inputs (factor 8)."""
    task = TaskConfig(name="superres", size=32, factor=8)
    photos = synthetic_photos(64, 32)
    inputs = area_downsample(photos, 8)
    recs = [{"id": f"img{i:03d}", "source": f"img{i:03d}.png", "labels": {"kind": "blob" if i % 2 else "spot"}}
            for i in range(64)]
    splits = {"train": SplitData(photos[:48], inputs[:48], recs[:48]),
              "val": SplitData(photos[48:56], inputs[48:56], recs[48:56]),
              "test": SplitData(photos[56:], inputs[56:], recs[56:])}
    return write_dataset(tmp_path / "data", task, splits, source="synthetic")


def make_dataset(path: Path, n: int = 24, seed: int = 0, prefix: str = "a", size: int = 32,
                 factor: int = 8) -> Path:
    """A superres dataset of ``n`` blob photos (the last 4 are val) with labels ``kind`` and ``shade``."""
    task = TaskConfig(name="superres", size=size, factor=factor)
    photos = synthetic_photos(n, size, seed=seed)
    inputs = area_downsample(photos, factor)
    recs = [{"id": f"{prefix}{i:03d}", "source": f"{prefix}{i:03d}.png",
             "labels": {"kind": "blob" if i % 2 else "spot", "shade": ["red", "green", "blue"][i % 3]}}
            for i in range(n)]
    k = n - 4
    splits = {"train": SplitData(photos[:k], inputs[:k], recs[:k]),
              "val": SplitData(photos[k:], inputs[k:], recs[k:])}
    return write_dataset(path, task, splits, source="synthetic")


def make_tiny_model_dir(d: Path) -> Path:
    """A tiny random-init regressor for 32x32 superres (factor 8), saved as a MODEL_DIR."""
    import torch

    from pixelnn.config import RegressorConfig
    from pixelnn.io import write_json
    from pixelnn.models.regressor import Regressor

    torch.manual_seed(0)
    model = Regressor(RegressorConfig(in_channels=3, input_size=4, size=32, base_channels=8, depth=2))
    torch.nn.init.normal_(model.head.weight, std=0.05)  # not just bicubic upsampling
    model.save(d / "regressor.safetensors")
    write_json(d / "config.json", {"format": "pixelnn-model", "version": 1,
                                   "task": TaskConfig(name="superres", size=32, factor=8).to_dict(),
                                   "regressor": model.config.to_dict()})
    return d


def make_tiny_library(root: Path, extra: int = 0) -> tuple[Path, Path]:
    """A tiny model (:func:`make_tiny_model_dir`) with a library of the train pairs of a 30-photo dataset
    (:func:`make_dataset`), plus ``extra`` more pairs in a second shard; returns (model_dir, data_dir)."""
    import torch

    from pixelnn.library import ExemplarLibrary

    torch.set_num_threads(1)
    model = make_tiny_model_dir(root / "model")
    data = make_dataset(root / "data", n=30, seed=0)
    more = [make_dataset(root / "more", n=extra + 4, seed=3, prefix="b")] if extra else []
    ExemplarLibrary.build(None, model, [data, *more], progress=False)
    return model, data
