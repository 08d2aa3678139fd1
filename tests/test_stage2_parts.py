"""Stage 2 as parts (issue 11): options, the mode registry, the store contract, batches, the CLI and devices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pixelnn import matching, modes
from pixelnn.cli import main
from pixelnn.data.dataset import Dataset
from pixelnn.errors import PixelNNError
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline
from pixelnn.store import ArrayStore, ExemplarStore

from .conftest import make_tiny_library

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    model, data = make_tiny_library(root, extra=10)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16, device="cpu")
    return root, model, data, pipe


# ------------------------------------------------------------------------------------------ options
def test_options_round_trip_and_mode_defaults_in_one_place():
    o = SynthesisOptions(mode="coherent", windows=[1, "whole"], sets=[[1], [1, 2, 3]], where={"kind": "blob"},
                         exemplars="a001", pca_dims=0)
    assert o.windows == (1, None) and o.where == (("kind", ("blob",)),) and o.exemplars == ("a001",)
    text = json.dumps(o.to_dict())
    assert SynthesisOptions.from_dict(json.loads(text)) == o
    r = o.resolved()
    assert (r.vote_size, r.chroma_weight, r.patch_size) == (3, 0.6, 11)  # the coherent mode's defaults
    assert SynthesisOptions(mode="coherent", vote_size=1).resolved().vote_size == 1  # given values win
    assert SynthesisOptions(mode="matched").resolved().patch_size is None  # matched has no patch
    assert SynthesisOptions().mode == "coherent"  # the default (issue 16)
    assert [(s.ranks, s.window) for s in o.output_specs()] == [((0,), 1), ((0,), None), ((0, 1, 2), 1),
                                                               ((0, 1, 2), None)]


@pytest.mark.parametrize("bad,message", [
    ({"mode": "nope"}, "valid: matched, coherent, global, authors"), ({"color": "cmyk"}, "valid: rgb, luma"),
    ({"vote_size": 2}, "odd"), ({"chroma_weight": 1.5}, "between 0 and 1"), ({"windows": ["big"]}, "window"),
    ({"sets": [[0]]}, "1-based"), ({"top_k": 0}, "top_k"), ({"descriptor": "sift"}, "hypercolumn"),
    ({"num_outputs": 0}, "num_outputs")])
def test_bad_options_give_one_line_errors(bad, message):
    with pytest.raises(PixelNNError, match=message) as e:
        SynthesisOptions(**bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad,message", [
    ({"vote_size": "x"}, "vote_size must be an odd integer >= 1, got 'x'"),
    ({"highpass_sigma": "x"}, "highpass_sigma must be a number"),
    ({"chroma_weight": None, "seed": "x"}, "seed must be an integer"), ({"top_k": 2.5}, "top_k must be an integer"),
    ({"windows": 5}, "windows must be a list"), ({"sets": [["a"]]}, "rank must be an integer"),
    ({"where": {"kind": 5}}, "must be a list"), ({"exemplars": 5}, "exemplars must be a list"),
    ({"top_k": True}, "top_k must be an integer between 1 and 10000, got True")])
def test_wrongly_typed_options_give_one_line_errors(bad, message):
    """What a hand-written options file can hold: every wrong type is a one-line error, never a traceback."""
    with pytest.raises(PixelNNError, match=message) as e:
        SynthesisOptions.from_dict(bad)
    assert "\n" not in str(e.value)
    assert SynthesisOptions(vote_size=3.0).vote_size == 3 and isinstance(SynthesisOptions(vote_size=3.0).vote_size, int)


def test_a_bad_options_file_exits_2_with_one_line(setup, tmp_path, capsys):
    root, model, data, pipe = setup
    _save_inputs(tmp_path / "in", data, 1)
    (tmp_path / "o.json").write_text(json.dumps({"mode": "coherent", "vote_size": "three"}))
    assert main(["-q", "synthesize", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--options", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vote_size must be an odd integer >= 1, got 'three'" in err[0]


def test_unknown_option_names_list_the_valid_ones():
    with pytest.raises(PixelNNError, match="valid: top_k, sets"):
        SynthesisOptions.from_dict({"topk": 3})
    with pytest.raises(PixelNNError, match="unknown synthesis option"):
        SynthesisOptions().replace(window=3)


# ------------------------------------------------------------------------------------------ modes
def test_adding_a_mode_is_one_class_and_one_registration(setup, monkeypatch):
    root, model, data, pipe = setup
    monkeypatch.setattr(modes, "_REGISTRY", dict(modes._REGISTRY))

    @modes.register_mode
    class StageOneOnly(modes.GlobalMode):  # copies nothing: the outputs are f(x)
        name = "stage1-only"
        summary = "f(x) itself"

        def compose(self, stage1, ex_photos, ex_stage1, matches, specs, options):
            return np.repeat(stage1[None], len(specs), axis=0)

    assert "stage1-only" in modes.mode_names()
    x = np.asarray(Dataset(data).split("val").inputs[0])
    result = pipe(x, mode="stage1-only", num_outputs=3, back_projection=False)
    assert all(np.array_equal(o, result.stage1) for o in result.outputs)
    with pytest.raises(SystemExit):  # the CLI reads its choices from the registry...
        main(["synthesize", "x.png", "--model", str(model), "--out", str(root / "o"), "--mode", "nope"])
    assert "stage1-only" in list(__import__("pixelnn.cli", fromlist=["_ModeChoices"])._ModeChoices())


def test_global_mode_runs_no_windowed_matching(setup, monkeypatch):
    root, model, data, pipe = setup
    x = np.asarray(Dataset(data).split("val").inputs[1])

    def boom(*a, **k):
        raise AssertionError("windowed matching ran")

    monkeypatch.setattr(modes, "match_windows", boom)
    monkeypatch.setattr(matching, "match_windows", boom)
    result = pipe(x, mode="global")
    assert result.outputs.shape == (72, 32, 32, 3)
    yy, xx = np.mgrid[0:32, 0:32]
    assert all(np.array_equal(result.source_y[o], yy) and np.array_equal(result.source_x[o], xx) for o in range(72))
    with pytest.raises(AssertionError, match="windowed matching ran"):
        pipe(x, mode="matched")


def test_coherent_mode_computes_only_the_window_similarities(setup, monkeypatch):
    root, model, data, pipe = setup
    x = np.asarray(Dataset(data).split("val").inputs[1])
    monkeypatch.setattr(modes, "match_windows", lambda *a, **k: pytest.fail("match_windows ran for coherent"))
    assert pipe(x, mode="coherent", num_outputs=4).outputs.shape == (4, 32, 32, 3)


@pytest.mark.parametrize("h, w, window, tile", [(6, 6, 3, 7), (6, 6, 3, 1), (9, 7, 3, 4), (11, 13, 5, 3),
                                                (8, 8, 8, 3), (12, 10, 1, 5)])
def test_window_similarities_equal_the_brute_force_truth(h, w, window, tile):
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(h * w, 5, generator=g), dim=1)
    e = torch.nn.functional.normalize(torch.randn(2, h * w, 5, generator=g), dim=2)
    sims = matching.window_similarities(q, e, h, w, window, tile=tile)
    idx = matching.window_indices(h, w, window)
    for k in range(2):
        full = q @ e[k].T  # (P, P)
        assert torch.allclose(sims[k], full.gather(1, idx), atol=1e-6)


# ------------------------------------------------------------------------------------------ store
def test_library_implements_the_store_contract_without_concatenating(setup, monkeypatch):
    root, model, data, pipe = setup
    lib = pipe.library
    assert isinstance(lib, ExemplarStore) and len(lib._shards) == 2
    lib.remove([lib.ids[3], lib.ids[30]])  # tombstones in both shards
    n = len(lib)
    pos = np.random.default_rng(0).integers(0, n, 25)  # any order, repeats
    monkeypatch.setattr(np, "concatenate", lambda *a, **k: pytest.fail("shards were concatenated"))
    # the truth: every live row read shard by shard, row by row
    rows = [(s, i) for s in lib._shards for i in s.live]
    for field in ("photos", "stage1", "inputs", "global"):
        want = np.stack([s.arrays[field][i] for s, i in (rows[p] for p in pos)])
        assert np.array_equal(lib.take(field, pos), want)
    assert lib.ids_of(pos) == [rows[p][0].records[rows[p][1]]["id"] for p in pos]
    assert [r["id"] for r in lib.records_of(pos)] == lib.ids_of(pos)
    assert lib.position(lib.ids_of([17])[0]) == 17
    monkeypatch.undo()
    # search over the shards equals exact brute force on an in-memory store of the same rows
    everything = np.arange(n)
    truth = ArrayStore(lib.take("photos", everything), lib.take("stage1", everything), lib.take("global", everything),
                       records=lib.records_of(everything))
    q = lib.take("global", [5, 33])
    allowed = lib.select(where={"kind": ["blob"]})
    for a in (None, allowed):
        d1, i1 = lib.search(q, 7, a)
        d2, i2 = truth.search(q, 7, a)
        assert np.array_equal(i1, i2) and np.allclose(d1, d2, atol=1e-6)
    assert np.array_equal(truth.select(where={"kind": ["blob"]}), allowed)
    with pytest.raises(PixelNNError, match="out of range"):
        lib.take("photos", [n])
    with pytest.raises(PixelNNError, match="valid: photos, stage1, inputs, global"):
        lib.take("pixels", [0])


def test_nothing_outside_the_store_indexes_its_arrays():
    import pathlib
    import re

    src = pathlib.Path(__file__).resolve().parents[1] / "src" / "pixelnn"
    pattern = re.compile(r"\blibrary\.(photos|stage1|inputs|global_desc)\b|\b_gather\(")
    offenders = [f"{p.name}:{i + 1}" for p in src.rglob("*.py") for i, line in enumerate(p.read_text().splitlines())
                 if pattern.search(line)]
    assert not offenders


# ------------------------------------------------------------------------------------------ batches
def test_exact_batches_are_bit_identical_to_single_runs(setup):
    root, model, data, pipe = setup
    split = Dataset(data).split("val")
    xs = [np.asarray(split.inputs[i]) for i in range(4)]
    options = SynthesisOptions(num_outputs=12, seed=3, mode="coherent")
    singles = [pipe(x, options) for x in xs]
    for b, s in zip(pipe.batch(xs, options, exact=True), singles):
        assert b.specs == s.specs and np.array_equal(b.neighbours, s.neighbours)
        for name in ("outputs", "exemplar", "source_y", "source_x", "similarity", "neighbour_similarity"):
            assert np.array_equal(getattr(b, name), getattr(s, name)), name
    assert pipe.device.type != "cpu" or all(  # exact is the CPU's default
        np.array_equal(b.outputs, s.outputs) for b, s in zip(pipe.batch(xs, options), singles))


def test_batched_convolutions_stay_within_the_agreement_bounds(setup):
    root, model, data, pipe = setup
    split = Dataset(data).split("val")
    xs = [np.asarray(split.inputs[i]) for i in range(4)]
    options = SynthesisOptions(num_outputs=12, seed=3)
    batched = pipe.batch(xs, options, exact=False)
    singles = [pipe(x, options) for x in xs]
    same_corr = same_px = total = 0
    for b, s in zip(batched, singles):
        assert b.specs == s.specs and np.array_equal(b.neighbours, s.neighbours)
        corr = (b.exemplar == s.exemplar) & (b.source_y == s.source_y) & (b.source_x == s.source_x)
        same_corr += corr.sum()
        same_px += (b.outputs == s.outputs).all(-1).sum()
        total += b.exemplar.size
        diff = np.abs(b.outputs.astype(int) - s.outputs.astype(int)).max(-1)
        assert diff[corr].max(initial=0) <= 1  # where the match is the same, rounding moves a pixel by <= 1/255
    assert same_corr / total >= 0.999 and same_px / total >= 0.999


# ------------------------------------------------------------------------------------------ CLI
def _save_inputs(folder, data, n):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    split = Dataset(data).split("val")
    for i in range(n):
        Image.fromarray(np.asarray(split.inputs[i])).save(folder / f"in{i}.png")


def test_synthesize_folder_and_glob_in_batches_resumes_and_reproduces(setup, tmp_path, capsys):
    root, model, data, pipe = setup
    _save_inputs(tmp_path / "in", data, 3)
    out = tmp_path / "out"
    args = ["-q", "synthesize", str(tmp_path / "in"), "--model", str(model), "--out", str(out), "--pca-dims", "16",
            "--num-outputs", "5", "--batch-size", "2", "--mode", "coherent", "--vote-size", "1", "--device", "cpu"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["in0", "in1", "in2"]
    manifest = json.loads((out / "in1" / "manifest.json").read_text())
    assert manifest["options"]["mode"] == "coherent" and manifest["options"]["vote_size"] == 1
    assert manifest["options"]["patch_size"] == 11  # resolved: the mode's default is recorded
    stamp = (out / "in0" / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # a re-run skips the complete ones
    assert "0 inputs" in capsys.readouterr().out and (out / "in0" / "manifest.json").stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0
    assert (out / "in0" / "manifest.json").stat().st_mtime_ns != stamp
    assert main(["-q", "synthesize", str(tmp_path / "in" / "in*.png"), "--model", str(model), "--out",
                 str(tmp_path / "glob"), "--pca-dims", "16", "--num-outputs", "2"]) == 0
    assert len(list((tmp_path / "glob").iterdir())) == 3
    # the saved manifest fed back in reproduces its outputs bit for bit
    again = tmp_path / "again"
    assert main(["-q", "synthesize", str(out / "in1" / "input.png"), "--model", str(model), "--out", str(again),
                 "--options", str(out / "in1" / "manifest.json")]) == 0
    from PIL import Image

    for o in range(1, 6):
        a = np.asarray(Image.open(out / "in1" / f"output_{o:03d}.png"))
        b = np.asarray(Image.open(again / "input" / f"output_{o:03d}.png"))
        assert np.array_equal(a, b)
    ca, cb = np.load(out / "in1" / "correspondences.npz"), np.load(again / "input" / "correspondences.npz")
    assert all(np.array_equal(ca[k], cb[k]) for k in ("library_position", "source_y", "source_x"))


@pytest.mark.parametrize("extra,message", [
    (["--device", "cuda:7"], "device"), (["--vote-size", "2"], "odd"), (["--sets", "0-2"], "1-based"),
    (["--options", "missing.json"], "no such options file")])
def test_synthesize_bad_options_exit_2_with_one_line(setup, tmp_path, capsys, extra, message):
    if extra[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    root, model, data, pipe = setup
    _save_inputs(tmp_path / "in", data, 1)
    assert main(["-q", "synthesize", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "o"),
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_synthesize_missing_inputs_exit_2(setup, tmp_path, capsys):
    root, model, data, pipe = setup
    assert main(["-q", "synthesize", str(tmp_path / "nothing*.png"), "--model", str(model), "--out",
                 str(tmp_path / "o")]) == 2
    assert "no files match" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ devices
def test_device_choices_resolve_on_this_machine():
    from pixelnn.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else
                                      resolve_device("auto"))
    with pytest.raises(PixelNNError, match="valid: auto, cpu, cuda, cuda:N, mps"):
        resolve_device("tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_matching_equals_cpu_up_to_ties(setup):
    """The same query on CUDA and CPU: the same correspondences except where two pixels tie in similarity."""
    root, model, data, pipe = setup
    gpu = PixelNNPipeline.from_model_dir(model, pca_dims=16, device="cuda")
    assert next(gpu.regressor.parameters()).is_cuda
    x = np.asarray(Dataset(data).split("val").inputs[0])
    for mode in ("matched", "coherent", "authors", "global"):
        a, b = pipe(x, mode=mode), gpu(x, mode=mode)
        assert np.array_equal(a.neighbours, b.neighbours)
        same = (a.exemplar == b.exemplar) & (a.source_y == b.source_y) & (a.source_x == b.source_x)
        # where they differ, the two matches are equally similar (a tie), up to float rounding
        assert np.allclose(a.similarity[~same], b.similarity[~same], atol=1e-4)
        assert same.mean() > 0.99
