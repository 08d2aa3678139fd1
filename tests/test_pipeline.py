"""End-to-end stage 2 on tiny data: library -> pipeline -> saved results, filters and provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixelnn.cli import main
from pixelnn.compose import back_project, recompose, recompose_keywords
from pixelnn.data.dataset import Dataset
from pixelnn.errors import PixelNNError
from pixelnn.library import ExemplarLibrary
from pixelnn.modes import get_mode
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline, save_result

from .conftest import make_dataset, make_tiny_library, make_tiny_model_dir

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    return root, model, data, pipe


def test_72_outputs_with_consistent_provenance(setup):
    root, model, data, pipe = setup
    x = Dataset(data).split("val").inputs[0]
    result = pipe(np.asarray(x), top_k=11)
    assert result.outputs.shape == (72, 32, 32, 3)
    assert len(result.neighbours) == 11 and len(set(result.neighbours.tolist())) == 11
    assert result.exemplar.shape == result.source_y.shape == result.similarity.shape == (72, 32, 32)
    for o, spec in enumerate(result.specs):  # every pixel comes from a member of the output's set
        members = set(result.neighbours[list(spec.ranks)].tolist())
        assert set(np.unique(result.exemplar[o]).tolist()) <= members
    # the saved correspondences re-compose every output exactly from the library
    lib = pipe.library
    again = recompose(result.stage1, lib, result.exemplar, result.source_y, result.source_x,
                      **recompose_keywords(result.options, result.input))
    assert np.array_equal(again, result.outputs)
    # same-pixel windows copy from the same position
    same = [o for o, s in enumerate(result.specs) if s.window == 1]
    yy, xx = np.mgrid[0:32, 0:32]
    assert all(np.array_equal(result.source_y[o], yy) and np.array_equal(result.source_x[o], xx) for o in same)


def test_coherent_mode_has_fewer_seams_and_stays_explainable(setup, tmp_path):
    from pixelnn.evaluation.coherence import seam_rate

    root, model, data, pipe = setup
    x = np.asarray(Dataset(data).split("val").inputs[1])
    plain = pipe(x, top_k=11, mode="matched")
    result = pipe(x, top_k=11, mode="coherent", patch_size=5)
    defaults, opts = get_mode("coherent").defaults, result.options
    assert (opts.vote_size, opts.highpass_sigma, opts.chroma_weight, opts.patch_size) == \
        (defaults["vote_size"], defaults["highpass_sigma"], defaults["chroma_weight"], 5)
    for o, spec in enumerate(result.specs):  # still only the set's members, inside the window
        assert set(np.unique(result.exemplar[o]).tolist()) <= set(result.neighbours[list(spec.ranks)].tolist())
        if spec.window is not None:
            yy, xx = np.mgrid[0:32, 0:32]
            assert np.abs(result.source_y[o] - yy).max() <= spec.window // 2
            assert np.abs(result.source_x[o] - xx).max() <= spec.window // 2
    seams = seam_rate(result.exemplar, result.source_y, result.source_x).mean()
    assert seams < 0.75 * seam_rate(plain.exemplar, plain.source_y, plain.source_x).mean()
    # every output is rebuilt from the correspondences, the library and the recorded options
    lib = pipe.library
    again = recompose(result.stage1, lib, result.exemplar, result.source_y, result.source_x,
                      **recompose_keywords(opts, x))
    assert np.array_equal(again, result.outputs)
    manifest = json.loads((save_result(result, tmp_path / "out", lib) / "manifest.json").read_text())
    assert manifest["options"]["mode"] == "coherent" and manifest["options"]["chroma_weight"] == opts.chroma_weight
    with pytest.raises(PixelNNError, match="patch_size"):
        pipe(x, mode="coherent", patch_size=4)


def test_query_equal_to_exemplar_reproduces_it(setup):
    root, model, data, pipe = setup
    train = Dataset(data).split("train")
    x = np.asarray(train.inputs[5])
    result = pipe(x, sets=[[1]], windows=[1], top_k=1, mode="matched", back_projection=False)
    assert result.neighbour_ids == [train.records[5]["id"]]
    assert np.array_equal(result.outputs[0], np.asarray(train.photos[5]))
    # back-projected onto its own thumbnail: the photo, its blocks shifted by what the thumbnail's rounding lost
    projected = pipe(x, sets=[[1]], windows=[1], top_k=1, mode="matched").outputs[0]
    assert np.array_equal(projected, back_project(np.asarray(train.photos[5])[None], x, 8)[0])
    assert np.abs(projected.astype(int) - np.asarray(train.photos[5])).max() <= 2


def test_filters_never_let_excluded_exemplars_in(setup):
    root, model, data, pipe = setup
    x = np.asarray(Dataset(data).split("val").inputs[1])
    lib = pipe.library
    allowed = set(lib.select(where={"kind": ["blob"]}).tolist())
    result = pipe(x, where={"kind": ["blob"]}, top_k=11)
    assert set(np.unique(result.exemplar).tolist()) <= allowed
    assert all(r["labels"]["kind"] == "blob" for r in lib.records_of(result.neighbours))
    ids = [lib.ids[0], lib.ids[3], lib.ids[4]]
    result = pipe(x, exemplars=ids, top_k=11)  # fewer than K: outputs needing more are dropped
    assert set(result.neighbour_ids) == set(ids)
    assert all(max(s.ranks) < 3 for s in result.specs) and len(result.specs) == 4 * 4  # 3 singles + (1,2,3)
    like = [np.asarray(Dataset(data).split("train").photos[2])]
    result = pipe(x, like_photos=like, top_k=3)
    near = set(pipe.allowed_positions(SynthesisOptions(), like_photos=like).tolist())
    assert set(np.unique(result.exemplar).tolist()) <= near
    with pytest.raises(PixelNNError, match="kind"):
        pipe(x, where={"kind": ["nonexistent"]})
    with pytest.raises(PixelNNError):
        pipe(x, where={"nolabel": ["x"]})


@pytest.mark.parametrize("mode,color", [("matched", "luma"), ("global", "rgb"), ("authors", "rgb")])
def test_modes_run(setup, mode, color):
    root, model, data, pipe = setup
    x = np.asarray(Dataset(data).split("val").inputs[2])
    result = pipe(x, mode=mode, color=color, sets=[(1,), (1, 2, 3)], windows=(1, None))
    assert result.outputs.shape == (4, 32, 32, 3) and result.options.mode == mode


def test_regressor_descriptor(setup):
    root, model, data, pipe = setup
    other = PixelNNPipeline.from_model_dir(model, descriptor="regressor", pca_dims=8)
    result = other(np.asarray(Dataset(data).split("val").inputs[0]), top_k=11, num_outputs=5, seed=1)
    assert result.outputs.shape == (5, 32, 32, 3)


def test_save_result_and_cli(setup, tmp_path, capsys):
    root, model, data, pipe = setup
    x = np.asarray(Dataset(data).split("val").inputs[0])
    result = pipe(x, num_outputs=6, seed=0)
    out = save_result(result, tmp_path / "res", pipe.library)
    names = {p.name for p in out.iterdir()}
    assert {"input.png", "stage1.png", "grid.png", "correspondences.npz", "manifest.json",
            "output_001.png", "output_006.png", "correspondence_006.png"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["outputs"]) == 6 and set(manifest["exemplars"]) == set(result.neighbour_ids)
    corr = np.load(out / "correspondences.npz", allow_pickle=False)
    assert corr["library_position"].shape == (6, 32, 32)
    # CLI: from a photo, with a label filter
    from PIL import Image

    Image.fromarray(np.asarray(Dataset(data).split("val").photos[0])).save(tmp_path / "shoe.png")
    assert main(["-q", "synthesize", str(tmp_path / "shoe.png"), "--from-photo", "--model", str(model),
                 "--out", str(tmp_path / "cli"), "--where", "kind=spot", "--pca-dims", "16",
                 "--num-outputs", "4"]) == 0
    manifest = json.loads((tmp_path / "cli" / "shoe" / "manifest.json").read_text())
    assert all(e["labels"]["kind"] == "spot" for e in manifest["exemplars"].values())
    assert (tmp_path / "cli" / "shoe" / "photo.png").is_file()
    # bad input: one line, exit 2
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["-q", "synthesize", str(tmp_path / "bad.png"), "--model", str(model), "--out", str(tmp_path / "x")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_borrowed_library(setup, tmp_path):
    """--library OTHER_MODEL_DIR: exemplars come only from the other library (e.g. bags for shoes)."""
    root, model, data, pipe = setup
    other_model = make_tiny_model_dir(tmp_path / "other")
    other_data = make_dataset(tmp_path / "other_data", n=20, seed=5, prefix="bag")
    ExemplarLibrary.build(None, other_model, [other_data], progress=False)
    from PIL import Image

    Image.fromarray(np.asarray(Dataset(data).split("val").inputs[0])).save(tmp_path / "thumb.png")
    assert main(["-q", "synthesize", str(tmp_path / "thumb.png"), "--model", str(model), "--library",
                 str(other_model), "--out", str(tmp_path / "res"), "--pca-dims", "8", "--num-outputs", "3"]) == 0
    manifest = json.loads((tmp_path / "res" / "thumb" / "manifest.json").read_text())
    assert manifest["exemplars"] and all(i.startswith("bag") for i in manifest["exemplars"])
