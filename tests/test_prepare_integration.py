"""prepare_dataset on ~200 images of each shared zip (skipped when the shared data is absent).

The data folder is ``$PIXELNN_SHARED_DATA`` if set, else ``<repo>/../shared/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pixelnn.config import TaskConfig
from pixelnn.data.dataset import Dataset
from pixelnn.data.prepare import prepare_dataset
from pixelnn.config import TrainConfig
from pixelnn.training import train

pytestmark = pytest.mark.integration

DATA = Path(os.environ.get("PIXELNN_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
N = 200  # images per zip


def shared(name: str) -> Path:
    p = DATA / name
    if not p.is_file():
        pytest.skip(f"shared data {p} not available")
    return p


def load_all(out: Path):
    ds = Dataset(out)
    splits = [ds.split(s, mmap=False) for s in ("train", "val", "test")]
    photos = np.concatenate([s.photos for s in splits])
    inputs = np.concatenate([s.inputs for s in splits])
    records = [r for s in splits for r in s.records]
    return ds, photos, inputs, records


def train_few_steps(data_dir: Path, model_dir: Path) -> None:
    """A few optimisation steps of the real (default-size) regressor on the prepared data."""
    result = train(data_dir, model_dir, TrainConfig(batch_size=4, max_steps=3, val_every=10**6, sample_every=10**6),
                   progress=False, final_eval_limit=8)
    assert result.steps == 3 and np.isfinite(result.metrics["psnr"])
    assert (model_dir / "regressor.safetensors").is_file() and (model_dir / "samples" / "latest.png").is_file()


def test_shoes_superres_pad(tmp_path):
    rep = prepare_dataset(shared("ut-zap50k-images-subset.zip"), tmp_path / "shoes", TaskConfig(),
                          fit="pad", limit=N, progress=False)
    assert rep.total == N and rep.skipped == {} and rep.source_kind == "zip"
    assert rep.label_keys == ["Category", "Subcategory", "Brand"]
    ds, photos, inputs, records = load_all(tmp_path / "shoes")
    assert photos.shape == (N, 96, 96, 3) and inputs.shape == (N, 12, 12, 3)
    assert all(set(r["labels"]) == {"Category", "Subcategory", "Brand"} for r in records)
    assert {r["labels"]["Category"] for r in records} <= {"Boots", "Sandals", "Shoes", "Slippers"}
    assert records[0]["source"].startswith("ut-zap50k-images/")
    # 136x102 padded into 96x96: the top and bottom 12-pixel bands and the corners are white
    assert photos[:, :10].min() == 255 and photos[:, -10:].min() == 255
    corners = np.concatenate([photos[:, :4, :4], photos[:, -4:, -4:]], axis=1)
    assert corners.mean() > 250
    assert ds.manifest["fit"] == "pad" and ds.manifest["source_kind"] == "zip"
    train_few_steps(tmp_path / "shoes", tmp_path / "model")


def test_celeba_superres_crop_identity(tmp_path):
    rep = prepare_dataset(shared("celeba-10k.zip"), tmp_path / "celeba", TaskConfig(), fit="auto",
                          limit=N, progress=False, sample="first")  # the first N: 000001 among them
    assert rep.fit == "crop" and rep.total == N and rep.skipped == {}
    assert rep.label_keys == ["identity"]
    ds, photos, inputs, records = load_all(tmp_path / "celeba")
    assert photos.shape == (N, 96, 96, 3) and inputs.shape == (N, 12, 12, 3)
    by_id = {r["id"]: r for r in records}
    assert by_id["img_align_celeba/000001"]["labels"] == {"identity": "2880"}  # from the README example
    assert all(r["labels"]["identity"].isdigit() for r in records)
    assert photos.mean(axis=(1, 2, 3)).std() > 5  # real, varied faces (not blank padding)
    train_few_steps(tmp_path / "celeba", tmp_path / "model")


def test_cats_superres(tmp_path):
    rep = prepare_dataset(shared("afhq-cat.zip"), tmp_path / "cats", TaskConfig(), limit=N, progress=False)
    assert rep.total == N and rep.fit == "crop" and rep.label_keys == [] and rep.upscaled == 0
    ds, photos, inputs, records = load_all(tmp_path / "cats")
    assert photos.shape == (N, 96, 96, 3) and inputs.shape == (N, 12, 12, 3)
    assert all(r["labels"] == {} for r in records)
    train_few_steps(tmp_path / "cats", tmp_path / "model")


def test_edges2handbags_paired_btoa(tmp_path):
    task = TaskConfig(name="paired", direction="BtoA")
    rep = prepare_dataset(shared("edges2handbags-subset.zip"), tmp_path / "bags", task, limit=N, progress=False,
                          sample="first")
    assert rep.total == N and rep.skipped == {} and rep.split_source == "folders"
    assert rep.task.input_channels == 1
    ds, photos, inputs, records = load_all(tmp_path / "bags")
    assert ds.task.input_channels == 1 and ds.task.direction == "BtoA"
    assert photos.shape == (N, 96, 96, 3) and inputs.shape == (N, 96, 96, 1)
    # inputs are edge maps: mostly white with a few dark strokes; photos are coloured
    assert (inputs > 230).mean() > 0.8 and (inputs < 200).mean() > 0.02  # thin strokes turn gray at 96 px
    chroma = photos.astype(int).max(-1) - photos.astype(int).min(-1)
    assert chroma.mean() > 5
    assert all(r["source"].startswith("edges2handbags-subset/train/") for r in records)  # first N in order
    train_few_steps(tmp_path / "bags", tmp_path / "model")


def test_shoes_hed_edges(tmp_path):
    """HED edge maps of real shoes (a few dozen: HED is the slow part), then a few training steps."""
    pytest.importorskip("h5py")
    task = TaskConfig(name="edges", edge_method="hed")
    rep = prepare_dataset(shared("ut-zap50k-images-subset.zip"), tmp_path / "edges", task, limit=24, progress=False)
    ds, photos, inputs, records = load_all(tmp_path / "edges")
    assert inputs.shape == (24, 96, 96, 1) and rep.task.input_channels == 1
    # black strokes on white: mostly background, some strokes, and strokes sit where the shoe is (not on white)
    strokes = inputs[..., 0] == 0
    assert 0.01 < strokes.mean() < 0.2
    assert (photos[strokes].mean() < photos[~strokes].mean())
    train_few_steps(tmp_path / "edges", tmp_path / "model")
