"""Global retrieval (conv5 descriptors, faiss index) and the on-disk exemplar library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelnn.errors import PixelNNError
from pixelnn.zarr_store import STORE_JSON, ZarrLibrary
from pixelnn.indexing import index_command
from pixelnn.library import MANIFEST, SHARDS, ExemplarLibrary
from pixelnn.zarr_store import open_library
from pixelnn.models.regressor import Regressor, predict
from pixelnn.retrieval import GlobalIndex, descriptor_dim, global_descriptors

from .conftest import make_dataset, make_tiny_model_dir, synthetic_photos

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Keep CPU use small (the machine is shared) and results reproducible."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


# ----------------------------------------------------------------------------------------- helpers
def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Exact top-k by inner product with numpy: (D, I) over ``allowed`` positions (all by default)."""
    pos = np.arange(len(x)) if allowed is None else np.asarray(allowed)
    sims = q @ x[pos].T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), pos[order]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def data_a(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("a") / "data", seed=0, prefix="a")


@pytest.fixture(scope="module")
def data_b(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("b") / "data", n=16, seed=1, prefix="b")


@pytest.fixture
def lib(tmp_path, model_dir, data_a) -> ExemplarLibrary:
    return ExemplarLibrary.build(tmp_path / "lib", model_dir, [data_a], progress=False)


# ------------------------------------------------------------------------------------------ index
def test_flat_search_equals_brute_force():
    x, q = unit_rows(300, 32, 0), unit_rows(10, 32, 1)
    index = GlobalIndex.from_vectors(x)
    d, i = index.search(q, 7)
    gd, gi = brute_force(x, q, 7)
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == i.shape == (10, 7)
    np.testing.assert_array_equal(i, gi)
    np.testing.assert_allclose(d, gd, atol=1e-5)
    assert len(index) == 300


def test_ivf_probing_every_cell_is_exact():
    x, q = unit_rows(400, 16, 2), unit_rows(12, 16, 3)
    index = GlobalIndex.from_vectors(x, "ivf", nlist=8, nprobe=8)
    d, i = index.search(q, 5)
    gd, gi = brute_force(x, q, 5)
    np.testing.assert_array_equal(i, gi)
    np.testing.assert_allclose(d, gd, atol=1e-5)


@pytest.mark.parametrize("kind,step", [("flat", 20), ("flat", 2), ("ivf", 20), ("ivf", 2)])
def test_subset_search_is_exact_and_only_returns_allowed(kind, step):
    x, q = unit_rows(400, 16, 4), unit_rows(9, 16, 5)
    index = GlobalIndex.from_vectors(x, kind, nlist=8, nprobe=8)
    allowed = np.arange(3, 400, step)
    d, i = index.search(q, 6, allowed)
    assert np.isin(i, allowed).all()
    gd, gi = brute_force(x, q, 6, allowed)
    np.testing.assert_array_equal(i, gi)
    np.testing.assert_allclose(d, gd, atol=1e-5)
    mask = np.zeros(400, bool)
    mask[allowed] = True  # a boolean mask works too
    np.testing.assert_array_equal(index.search(q, 6, mask)[1], i)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_fewer_than_k_pads_with_minus_one(kind):
    x, q = unit_rows(40, 8, 6), unit_rows(3, 8, 7)
    index = GlobalIndex.from_vectors(x, kind, nlist=2, nprobe=2)
    d, i = index.search(q, 5, allowed=np.array([7, 3]))
    assert (np.sort(i[:, :2], axis=1) == [3, 7]).all()
    assert (i[:, 2:] == -1).all() and np.isneginf(d[:, 2:]).all() and np.isfinite(d[:, :2]).all()
    d, i = index.search(q, 50)
    assert (i[:, 40:] == -1).all() and np.isneginf(d[:, 40:]).all()
    assert sorted(i[0, :40]) == list(range(40))
    d, i = index.search(q, 4, allowed=np.array([], np.int64))
    assert (i == -1).all() and np.isneginf(d).all()
    d, i = GlobalIndex(8, kind).search(q, 2)  # empty index
    assert (i == -1).all()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_remove_renumbers_like_np_delete(kind):
    x, q = unit_rows(200, 16, 8), unit_rows(6, 16, 9)
    index = GlobalIndex.from_vectors(x, kind, nlist=4, nprobe=4)
    gone = [0, 5, 77, 199]
    index.remove(gone)
    rest = np.delete(x, gone, axis=0)
    assert len(index) == 196
    np.testing.assert_array_equal(index.search(q, 8)[1], brute_force(rest, q, 8)[1])
    np.testing.assert_allclose(index.vectors(), rest)


def test_index_errors():
    with pytest.raises(PixelNNError, match="valid: flat, ivf"):
        GlobalIndex(8, "hnsw")
    index = GlobalIndex.from_vectors(unit_rows(10, 8, 0))
    with pytest.raises(PixelNNError, match=r"\(Q, 8\)"):
        index.search(unit_rows(2, 4, 0), 1)
    with pytest.raises(PixelNNError, match="out of range"):
        index.search(unit_rows(2, 8, 0), 1, allowed=np.array([10]))
    with pytest.raises(PixelNNError, match="positive"):
        index.search(unit_rows(2, 8, 0), 0)


# ------------------------------------------------------------------------------------ descriptors
def test_global_descriptors_shape_and_norm():
    images = synthetic_photos(5, 32, seed=3)
    desc = global_descriptors(images, batch_size=2)
    assert desc.shape == (5, descriptor_dim(32)) == (5, 256) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1, atol=1e-5)
    same = global_descriptors(np.stack([images[1], images[1]]))
    assert same @ same[1] == pytest.approx([1.0, 1.0], abs=1e-5)
    np.testing.assert_allclose(same[0], desc[1], atol=1e-5)  # independent of the batch
    big = global_descriptors(synthetic_photos(1, 96))
    assert big.shape == (1, 6400) == (1, descriptor_dim(96))
    assert global_descriptors(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 256)
    with pytest.raises(PixelNNError, match="at least 31"):
        global_descriptors(np.zeros((1, 24, 24, 3), np.uint8))


# ---------------------------------------------------------------------------------------- library
def test_build_open_round_trip(lib, model_dir, data_a):
    from pixelnn.data.dataset import Dataset

    train = Dataset(data_a).split("train")
    again = ExemplarLibrary.open(lib.root)
    assert len(again) == len(lib) == 20
    assert list(again.ids) == [r["id"] for r in train.records]
    everything = np.arange(len(again))
    np.testing.assert_array_equal(again.take("photos", everything), train.photos)
    model = Regressor.load(model_dir / "regressor.safetensors")
    np.testing.assert_array_equal(again.take("stage1", everything), predict(model, np.asarray(train.inputs)))
    np.testing.assert_allclose(again.take("global", everything), global_descriptors(again.take("stage1", everything)),
                               atol=1e-5)
    rec = again.records[3]
    assert rec["labels"] == train.records[3]["labels"] and rec["dataset"] == str(data_a.resolve())
    manifest = json.loads((lib.root / MANIFEST).read_text())
    assert manifest["format"] == "pixelnn-library" and manifest["version"] == 1 and manifest["count"] == 20
    assert manifest["descriptor"]["dim"] == 256 and manifest["task"]["size"] == 32
    assert again.model_dir == model_dir.resolve()
    d, i = again.search(again.take("global", [4, 9]), 3)
    assert list(i[:, 0]) == [4, 9] and d[:, 0] == pytest.approx(1.0, abs=1e-5)
    assert again.position("a007") == 7
    with pytest.raises(PixelNNError, match="unknown exemplar id"):
        again.position("nope")
    with pytest.raises(PixelNNError, match="already exists"):
        ExemplarLibrary.build(lib.root, model_dir, [data_a], progress=False)


def test_add_and_remove_change_len_and_search(lib, data_a, data_b):
    query = lib.take("global", [2])
    r = lib.add(data_b, progress=False)
    assert (r.added, r.skipped) == (12, 0) and len(lib) == 32
    assert list(lib.ids[20:]) == [f"b{i:03d}" for i in range(12)]
    assert lib.add(data_a, progress=False)[1:] == (0, 20)  # already present: skipped
    assert len(ExemplarLibrary.open(lib.root)) == 32
    q_b = lib.take("global", [25])
    assert lib.search(q_b, 1)[1][0, 0] == 25

    gone = ["a002", "b005", "a010"]
    assert lib.remove(gone) == 3 and len(lib) == 29
    for l2 in (lib, ExemplarLibrary.open(lib.root)):
        assert len(l2) == 29 and not set(gone) & set(l2.ids)
        _, i = l2.search(np.concatenate([query, q_b]), len(l2))
        returned = {l2.ids[p] for p in i.ravel() if p >= 0}
        assert returned == set(l2.ids)  # everything left, nothing removed
        assert l2.search(query, 1)[1][0, 0] != -1
    with pytest.raises(PixelNNError, match="unknown exemplar id.*'zzz'"):
        lib.remove(["a000", "zzz"])
    assert len(lib) == 29  # nothing removed
    # a removed id can come back, compaction keeps positions
    assert lib.add(data_a, progress=False)[1:] == (2, 18)
    ids, photos = lib.ids, lib.take("photos", np.arange(len(lib)))
    assert lib.compact() == 3
    again = ExemplarLibrary.open(lib.root)
    assert again.ids == ids and np.array_equal(again.take("photos", np.arange(len(again))), photos)
    assert sorted(p.name for p in (lib.root / SHARDS).iterdir()) == sorted(e["name"] for e in again.manifest["shards"])


def test_add_refuses_other_task_or_size(lib, tmp_path):
    other = make_dataset(tmp_path / "f4", factor=4)
    with pytest.raises(PixelNNError, match="different task.*factor 4"):
        lib.add(other, progress=False)
    bigger = make_dataset(tmp_path / "s64", size=64)
    with pytest.raises(PixelNNError, match="size 64"):
        lib.add(bigger, progress=False)
    assert len(ExemplarLibrary.open(lib.root)) == 20


def test_select(lib):
    index = lib.labels_index()
    assert set(index) == {"kind", "shade"} and sum(index["kind"].values()) == 20
    blob = lib.select({"kind": ["blob"]})
    assert len(blob) == 10 and all(r["labels"]["kind"] == "blob" for r in lib.records_of(blob))
    both = lib.select({"kind": "blob", "shade": ["red", "green"]})
    assert all(r["labels"]["shade"] in ("red", "green") for r in lib.records_of(both))
    assert set(both) < set(blob)
    assert list(lib.select(ids=["a004", "a001"])) == [1, 4]
    assert list(lib.select({"kind": ["blob"]}, ids=["a004", "a001"])) == [1]
    assert len(lib.select()) == 20
    with pytest.raises(PixelNNError, match="valid: kind, shade"):
        lib.select({"colour": ["red"]})
    with pytest.raises(PixelNNError, match="valid include.*'blob'"):
        lib.select({"kind": ["cloud"]})
    with pytest.raises(PixelNNError, match="unknown exemplar id"):
        lib.select(ids=["x"])
    _, i = lib.search(lib.take("global", np.arange(len(lib))), 20, allowed=blob)
    assert set(i[i >= 0].tolist()) == set(blob.tolist()) and (i[:, 10:] == -1).all()


def test_missing_or_corrupt_library(lib, tmp_path):
    with pytest.raises(PixelNNError, match="not a PixelNN library"):
        ExemplarLibrary.open(tmp_path / "nowhere")
    manifest = lib.root / MANIFEST
    good = manifest.read_text()
    manifest.write_text(good[: len(good) // 2])
    with pytest.raises(PixelNNError, match="not valid JSON"):
        ExemplarLibrary.open(lib.root)
    manifest.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PixelNNError, match="not a pixelnn-library"):
        ExemplarLibrary.open(lib.root)
    manifest.write_text(good)
    shard = lib.root / SHARDS / "0000" / "global.npy"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(PixelNNError, match="shard"):
        ExemplarLibrary.open(lib.root)
    manifest.unlink()
    with pytest.raises(PixelNNError, match="no library.json"):
        ExemplarLibrary.open(lib.root)


def test_crash_during_add_keeps_old_library(lib, data_b, monkeypatch):
    import pixelnn.library as library

    before = ExemplarLibrary.open(lib.root)
    ids, desc = before.ids, before.take("global", np.arange(len(before)))

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    # 1. while the shard's arrays are being written
    monkeypatch.setattr(library, "global_descriptors", boom)
    with pytest.raises(RuntimeError):
        lib.add(data_b, progress=False)
    monkeypatch.undo()
    after = ExemplarLibrary.open(lib.root)
    assert after.ids == ids and np.array_equal(after.take("global", np.arange(len(after))), desc)

    # 2. after the shard is in place, before the manifest is replaced
    monkeypatch.setattr(library, "write_json", boom)
    with pytest.raises(RuntimeError):
        lib.add(data_b, progress=False)
    monkeypatch.undo()
    after = ExemplarLibrary.open(lib.root)
    assert after.ids == ids and np.array_equal(after.take("global", np.arange(len(after))), desc)
    assert len(after.search(desc[:1], 5)[1][0]) == 5

    # the next add works and clears the orphan shard
    assert after.add(data_b, progress=False).added == 12
    final = ExemplarLibrary.open(lib.root)
    assert len(final) == 32
    assert sorted(p.name for p in (lib.root / SHARDS).iterdir()) == sorted(e["name"] for e in final.manifest["shards"])


def test_index_command(tmp_path, model_dir, data_a, data_b):
    out = tmp_path / "lib"
    text = index_command(data_a, model_dir, out=out, progress=False)
    assert "built" in text and "20 exemplars" in text
    text = index_command(data_a, model_dir, out=out, add=[data_b], remove=["a001"], progress=False)
    assert "added 0 exemplars" in text and "added 12" in text and "removed 1" in text
    lib = open_library(out)  # new libraries are chunked stores
    assert isinstance(lib, ZarrLibrary) and len(lib) == 31
    text = index_command(data_a, model_dir, progress=False)  # default: MODEL_DIR/library
    assert (model_dir / "library" / STORE_JSON).is_file() and "20 exemplars" in text
    with pytest.raises(PixelNNError, match="not a PixelNN store"):
        index_command(data_a, model_dir, out=tmp_path, progress=False)
    legacy = ExemplarLibrary.build(tmp_path / "v1", model_dir, [data_a], progress=False)
    text = index_command(data_b, model_dir, out=legacy.root, progress=False)  # a version-1 library stays one
    assert "added 12" in text and len(ExemplarLibrary.open(legacy.root)) == 32
