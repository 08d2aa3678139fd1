"""benchmarks/scale_dataset.py: a tiny build from synthetic zips (and from the shared zips when present)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelnn.config import TaskConfig
from pixelnn.data.dataset import Dataset
from pixelnn.tasks import derive_inputs

from .conftest import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("scale_dataset", ROOT / "benchmarks" / "scale_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("scale_dataset", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


sd = _load_script()


def _jpeg(w: int, h: int, seed: int, white: bool) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 255 if white else 90, np.uint8)
    y0, x0 = h // 4, w // 4
    img[y0:h - y0, x0:w - x0] = rng.integers(0, 255, 3, dtype=np.uint8)
    img[y0:h // 2, x0:w // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """The four shared zips in miniature (same layouts): 3 shoes, 2 faces, 2 cats, 2 handbag pairs."""
    d = tmp_path_factory.mktemp("zips")
    _zip(d / "ut-zap50k-images-subset.zip", {
        "ut-zap50k-images/Boots/Ankle/BrandA/1.jpg": _jpeg(136, 102, 1, True),
        "ut-zap50k-images/Boots/Ankle/BrandB/2.jpg": _jpeg(136, 102, 2, True),
        "ut-zap50k-images/Sandals/Flat/BrandA/3.jpg": _jpeg(136, 102, 3, True),
    })
    _zip(d / "celeba-10k.zip", {
        "img_align_celeba/000001.jpg": _jpeg(89, 109, 4, False),
        "img_align_celeba/000002.jpg": _jpeg(89, 109, 5, False),
        "identity_CelebA.txt": b"000001.jpg 17\n000002.jpg 42\n",
    })
    _zip(d / "afhq-cat.zip", {
        "afhq-cat/flickr_cat_000001.jpg": _jpeg(128, 128, 6, False),
        "afhq-cat/pixabay_cat_000002.jpg": _jpeg(128, 128, 7, False),
    })
    pair = np.concatenate([np.asarray(Image.open(io.BytesIO(_jpeg(128, 128, 8, True)))),
                           np.full((128, 128, 3), 255, np.uint8)], axis=1)
    buf = io.BytesIO()
    Image.fromarray(pair).save(buf, "JPEG", quality=90)
    _zip(d / "edges2handbags-subset.zip", {
        "edges2handbags-subset/train/1_AB.jpg": buf.getvalue(),
        "edges2handbags-subset/val/2_AB.jpg": buf.getvalue(),
        "edges2handbags-subset/README.txt": b"photo left, edges right\n",
    })
    return d


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "dataset.json"}


def test_tiny_build(fake_data: Path, tmp_path: Path):
    out = tmp_path / "a"
    m = sd.build(fake_data, out, total=40, seed=3, workers=2, progress=False)
    ds = Dataset(out)
    assert ds.task == TaskConfig(name="superres", size=96, factor=8)
    assert json.loads((out / "dataset.json").read_text())["task"] == {  # as `pixelnn prepare --task superres` writes
        "name": "superres", "size": 96, "factor": 8, "edge_method": "hed", "hed_scale": 2.0, "direction": "AtoB",
        "input_channels": 3, "hed_autocast": "auto"}
    train = ds.split("train")
    assert len(train) == 40 == m["counts"]["train"]
    assert len(ds.split("val")) == 0 and len(ds.split("test")) == 0
    assert train.photos.shape == (40, 96, 96, 3) and train.photos.dtype == np.uint8
    assert train.inputs.shape == (40, 12, 12, 3) and train.inputs.dtype == np.uint8
    assert np.array_equal(train.inputs, derive_inputs(np.asarray(train.photos), ds.task))
    ids = [r["id"] for r in train.records]
    assert len(set(ids)) == 40
    # real photos first (9), then 31 augmentations spread as 3 or 4 per photo
    real = [r for r in train.records if r["labels"]["augmented"] == "0"]
    assert [r["id"] for r in real] == ids[:9]
    per = m["scale"]["per_dataset"]
    assert {k: v["real"] for k, v in per.items()} == {"shoes": 3, "faces": 2, "cats": 2, "handbags": 2}
    assert sum(v["total"] for v in per.values()) == 40
    rec = train.records[0]
    assert rec["id"] == "shoes/ut-zap50k-images/Boots/Ankle/BrandA/1"
    assert rec["source"] == "ut-zap50k-images/Boots/Ankle/BrandA/1.jpg"
    assert rec["labels"] == {"dataset": "shoes", "Category": "Boots", "Subcategory": "Ankle", "Brand": "BrandA",
                             "augmented": "0"}
    faces = [r for r in real if r["labels"]["dataset"] == "faces"]
    assert [r["labels"]["identity"] for r in faces] == ["17", "42"]
    assert ids[9] == "shoes/ut-zap50k-images/Boots/Ankle/BrandA/1~aug1"
    assert all("~aug" in i for i in ids[9:])
    # the augmentations of a photo differ from it and from each other
    aug_of_first = [i for i, r in enumerate(ids) if r.startswith(ids[0] + "~")]
    imgs = [train.photos[0]] + [train.photos[i] for i in aug_of_first]
    assert len({im.tobytes() for im in imgs}) == len(imgs)
    # handbags: the left half (the photo), fitted like prepare does
    hb = next(i for i, r in enumerate(train.records) if r["labels"]["dataset"] == "handbags")
    assert train.photos[hb].mean() < 250  # not the blank right half
    # same seed, same bytes (other workers count); another seed changes only the augmentations
    sd.build(fake_data, tmp_path / "b", total=40, seed=3, workers=1, progress=False)
    assert _files(out) == _files(tmp_path / "b")
    sd.build(fake_data, tmp_path / "c", total=40, seed=4, workers=2, progress=False)
    other = Dataset(tmp_path / "c").split("train")
    assert np.array_equal(other.photos[:9], train.photos[:9])
    assert not np.array_equal(other.photos[9:], train.photos[9:])


def test_total_below_real_count_and_existing_out(fake_data: Path, tmp_path: Path):
    with pytest.raises(sd.PixelNNError, match="below"):
        sd.build(fake_data, tmp_path / "x", total=5, progress=False)
    assert not (tmp_path / "x").exists()
    sd.build(fake_data, tmp_path / "y", total=9, progress=False)
    with pytest.raises(sd.PixelNNError, match="already exists"):
        sd.build(fake_data, tmp_path / "y", total=9, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["y"]  # no temporary folder left


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data is absent")
def test_shared_zips_small(tmp_path: Path):
    out = tmp_path / "s"
    sd.main(["--data-dir", str(shared_data_dir()), "--out", str(out), "--limit-per-source", "2", "--total", "16",
             "--no-progress"])
    train = Dataset(out).split("train")
    assert len(train) == 16
    assert [r["labels"]["dataset"] for r in train.records[:8]] == ["shoes"] * 2 + ["faces"] * 2 + ["cats"] * 2 + \
        ["handbags"] * 2
    assert "identity" in train.records[2]["labels"] and "Category" in train.records[0]["labels"]
