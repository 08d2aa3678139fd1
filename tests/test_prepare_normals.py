"""``prepare --task normals``: normal maps as inputs, face masks stored beside them, photos without a face skipped.

The wiring is tested with a stand-in for the face mesh (fast, no model needed); the real model runs
on a few CelebA faces when ../shared/data is there.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from pixelnn import normals as N
from pixelnn import tasks
from pixelnn.config import TaskConfig
from pixelnn.data.dataset import Dataset, SplitData
from pixelnn.data.images import NO_FACE
from pixelnn.data.prepare import prepare_dataset
from pixelnn.errors import PixelNNError
from tests.conftest import shared_data_dir
from tests.test_facemesh import needs_model

S = 32


def _fake_normal_maps(photos, progress=False, **kw):
    """A stand-in for the face mesh: a photo 'has a face' when its top-left pixel is not pure red."""
    n, h, w, _ = photos.shape
    found = ~((photos[:, 0, 0] == (255, 0, 0)).all(-1))
    masks = np.zeros((n, h, w), bool)
    masks[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = found[:, None, None]
    maps = np.where(masks[..., None], photos[:, :, :, ::-1], N.BACKGROUND).astype(np.uint8)  # something photo-dependent
    normals = None
    if kw.get("float_normals"):  # the unit normals the maps encode (0 outside the mask), as the real mesh gives
        v = maps.astype(np.float32) / 255 * 2 - 1
        normals = np.where(masks[..., None], v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6), 0)
        normals = normals.astype(np.float32)
    return N.FaceNormals(maps, masks, found, found.astype(np.float32), np.zeros((n, 468, 3), np.float32), normals)


@pytest.fixture
def fake_mesh(monkeypatch):
    monkeypatch.setattr(N, "normal_maps", _fake_normal_maps)


def _collection(root, n=10, no_face=(2, 7)):
    rng = np.random.default_rng(0)
    for i in range(n):
        im = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
        if i in no_face:
            im[:6, :6] = (255, 0, 0)  # survives the centre crop and resize at the corner
        p = root / "img_align_celeba" / f"{i:06d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(p)


def test_task_config_normals():
    t = TaskConfig(name="normals", size=S, input_channels=1)
    assert t.input_channels == 3 and t.input_size == S
    assert TaskConfig.from_dict(t.to_dict()) == t


def test_prepare_normals_skips_photos_without_a_face_and_stores_masks(tmp_path, fake_mesh):
    _collection(tmp_path / "src")
    rep = prepare_dataset(tmp_path / "src", tmp_path / "out", TaskConfig(name="normals", size=S), fit="crop",
                          progress=False, val_fraction=0.2, test_fraction=0.2)
    assert rep.total == 8 and rep.skipped == {NO_FACE: 2}
    assert "skipped: no face 2" in rep.summary()
    ds = Dataset(tmp_path / "out")
    assert ds.task.name == "normals" and ds.task.input_channels == 3
    assert ds.manifest["masks"] is True and ds.manifest["skipped"] == {NO_FACE: 2}
    assert ds.manifest["input_shape"] == [S, S, 3]
    ids = []
    for name in ("train", "val", "test"):
        sp = ds.split(name)
        assert sp.masks is not None and sp.masks.dtype == bool and sp.masks.shape == (len(sp), S, S)
        assert (tmp_path / "out" / name / "masks.npy").is_file()
        for photo, x, m in zip(sp.photos, sp.inputs, sp.masks):
            expected = _fake_normal_maps(photo[None])
            np.testing.assert_array_equal(x, expected.maps[0])  # each input belongs to its own photo
            np.testing.assert_array_equal(m, expected.masks[0])
        ids += [r["id"] for r in sp.records]
    assert sorted(ids) == sorted(f"img_align_celeba/{i:06d}" for i in range(10) if i not in (2, 7))


def test_prepare_normals_nothing_found_is_an_error(tmp_path, fake_mesh):
    _collection(tmp_path / "src", n=3, no_face=(0, 1, 2))
    with pytest.raises(PixelNNError, match="no face found in any of the 3 photos"):
        prepare_dataset(tmp_path / "src", tmp_path / "out", TaskConfig(name="normals", size=S), fit="crop",
                        progress=False)
    assert not (tmp_path / "out").exists()


def test_other_tasks_store_no_masks(tmp_path):
    _collection(tmp_path / "src", n=4, no_face=())
    prepare_dataset(tmp_path / "src", tmp_path / "out", TaskConfig(name="superres", size=S, factor=4), fit="crop",
                    progress=False)
    ds = Dataset(tmp_path / "out")
    assert "masks" not in ds.manifest and ds.split("train").masks is None
    assert not (tmp_path / "out" / "train" / "masks.npy").exists()


def test_derive_inputs_raises_when_no_face(fake_mesh):
    photos = np.zeros((3, S, S, 3), np.uint8)
    out = tasks.derive(photos, TaskConfig(name="normals", size=S))
    assert out.usable.all() and out.masks.shape == (3, S, S) and out.inputs.shape == (3, S, S, 3)
    photos[1, 0, 0] = (255, 0, 0)
    with pytest.raises(PixelNNError, match="no face found in 1 of 3 photos"):
        tasks.derive_inputs(photos, TaskConfig(name="normals", size=S))
    with pytest.raises(PixelNNError, match="no face found in the photo"):
        tasks.derive_inputs(photos[1:2], TaskConfig(name="normals", size=S))
    sr = tasks.derive(photos, TaskConfig(name="superres", size=S, factor=4))
    assert sr.masks is None and sr.usable.all()


def test_split_data_checks_mask_shape():
    photos, inputs = np.zeros((2, S, S, 3), np.uint8), np.zeros((2, S, S, 3), np.uint8)
    SplitData(photos, inputs, [{}, {}], np.zeros((2, S, S), bool))
    with pytest.raises(ValueError, match="masks"):
        SplitData(photos, inputs, [{}, {}], np.zeros((2, S, S + 1), bool))


def test_cli_accepts_task_normals():
    from pixelnn.cli import build_parser

    args = build_parser().parse_args(["prepare", "photos.zip", "--task", "normals", "--out", "data/faces-normals"])
    assert args.task == "normals"


# --------------------------------------------------------------------------------------------------
# the real face mesh on CelebA


@needs_model
@pytest.mark.integration
def test_prepare_normals_on_celeba_faces(tmp_path):
    celeba = (shared_data_dir() or tmp_path / "absent") / "celeba-10k.zip"
    if not celeba.is_file():
        pytest.skip("../shared/data/celeba-10k.zip is absent")
    # 6 CelebA faces and 2 noise images, in one zip laid out like CelebA's
    with zipfile.ZipFile(celeba) as src, zipfile.ZipFile(tmp_path / "faces.zip", "w") as dst:
        for i in range(1, 7):
            name = f"img_align_celeba/{i:06d}.jpg"
            dst.writestr(name, src.read(name))
        rng = np.random.default_rng(1)
        for i in (7, 8):
            b = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (109, 89, 3), dtype=np.uint8)).save(b, format="PNG")
            dst.writestr(f"img_align_celeba/noise{i}.png", b.getvalue())
    rep = prepare_dataset(tmp_path / "faces.zip", tmp_path / "out", TaskConfig(name="normals"), fit="crop",
                          progress=False, val_fraction=0.0, test_fraction=0.0)
    assert rep.total == 6 and rep.skipped == {NO_FACE: 2}
    sp = Dataset(tmp_path / "out").split("train", mmap=False)
    assert sp.inputs.shape == (6, 96, 96, 3) and sp.masks.shape == (6, 96, 96)
    assert all(r["source"].endswith(".jpg") for r in sp.records)
    # the stored maps are the ones the photos give: aligned with them pixel for pixel
    again = N.normal_maps(sp.photos)
    np.testing.assert_array_equal(again.maps, sp.inputs)
    np.testing.assert_array_equal(again.masks, sp.masks)
    frac = sp.masks.mean((1, 2))
    assert ((frac > 0.15) & (frac < 0.35)).all(), frac
    assert (sp.inputs[~sp.masks] == N.BACKGROUND).all()


def test_prepare_threads_default_to_one_for_normals_and_are_restored(tmp_path, monkeypatch):
    import torch

    seen = []

    def spy(photos, progress=False, **kw):
        seen.append(torch.get_num_threads())
        return _fake_normal_maps(photos)

    monkeypatch.setattr(N, "normal_maps", spy)
    _collection(tmp_path / "src", n=4, no_face=())
    before = torch.get_num_threads()
    prepare_dataset(tmp_path / "src", tmp_path / "a", TaskConfig(name="normals", size=S), fit="crop", progress=False)
    assert seen == [1] and torch.get_num_threads() == before
    prepare_dataset(tmp_path / "src", tmp_path / "b", TaskConfig(name="normals", size=S), fit="crop", progress=False,
                    threads=2)
    assert seen[-1] == 2 and torch.get_num_threads() == before
    with pytest.raises(PixelNNError, match="threads must be between 1 and 1024, got 0"):
        prepare_dataset(tmp_path / "src", tmp_path / "c", TaskConfig(name="normals", size=S), threads=0)
    from pixelnn.cli import build_parser

    args = build_parser().parse_args(["prepare", "x.zip", "--task", "normals", "--out", "o", "--threads", "3"])
    assert args.threads == 3
    assert build_parser().parse_args(["prepare", "x.zip", "--task", "edges", "--out", "o"]).threads is None
