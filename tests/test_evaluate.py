"""``pixelnn evaluate`` and ``pixelnn report`` end to end on tiny data, with a fake pix2pix."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from pixelnn.cli import main
from pixelnn.errors import PixelNNError
from pixelnn.evaluate import EvalSettings, evaluate, select_inputs, select_real_photos
from pixelnn.modes import mode_names
from pixelnn.options import COLORS, SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline

from .conftest import make_tiny_library

pytest.importorskip("faiss")


class FakePix2Pix:
    """pix2pix's sampler contract: nearest-upsampled input plus a little seeded noise (nearly collapsed)."""

    def __init__(self, size: int = 32):
        self.size = size
        self.calls = []

    def sample(self, input_image, num_outputs=72, seed=0):
        self.calls.append((input_image.shape, num_outputs, seed))
        rng = np.random.default_rng(seed)
        f = self.size // input_image.shape[0]
        up = np.repeat(np.repeat(input_image, f, 0), f, 1).astype(np.int16)
        noise = rng.integers(-3, 4, size=(num_outputs, *up.shape))
        return np.clip(up[None] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    settings = EvalSettings(split="val", num_inputs=3, num_outputs=12, fid_outputs_per_input=2, num_examples=2,
                            diversity_outputs=5, kid_subsets=5)
    fake = FakePix2Pix()
    metrics = evaluate(model, root / "report", settings, data_dir=data, pix2pix=fake, pipeline=pipe, progress=False)
    return root, model, data, pipe, metrics, fake


def test_fid_real_photos_are_a_recorded_seeded_subset(setup, tmp_path):
    root, model, data, pipe, metrics, fake = setup
    assert metrics["fid_real_photos"] == {"method": "all", "seed": None, "count": 4, "split_size": 4}
    settings = EvalSettings(split="val", num_inputs=1, num_outputs=4, fid_outputs_per_input=2, fid_real_photos=3,
                            num_examples=0, diversity_outputs=2, kid_subsets=2, seed=1)
    m = evaluate(model, tmp_path / "r", settings, data_dir=data, pipeline=pipe, progress=False)
    assert m["fid_real_photos"] == {"method": "random", "seed": 1, "count": 3, "split_size": 4}
    assert m["methods"]["pixelnn"]["num_real"] == 3 and "a random subset, seed 1" in m["protocol"]["fid_kid"]


def test_examples_and_diversity_inputs_are_seeded_random_ones_of_those_evaluated(setup, tmp_path):
    """Issue 18: the examples were the first evaluated inputs (in split order: the first folders of the source)."""
    from pixelnn.evaluate import DIVERSITY_STREAM, EXAMPLES_STREAM, seeded_subset

    root, model, data, pipe, metrics, fake = setup
    assert metrics["example_positions"] == sorted(metrics["example_positions"])
    assert len(metrics["example_positions"]) == 2  # num_examples=2 of the 3 evaluated
    pick = seeded_subset(50, 6, 0, EXAMPLES_STREAM)
    assert len(pick) == 6 and pick.tolist() != list(range(6)) and (np.diff(pick) > 0).all()
    assert pick.tolist() != seeded_subset(50, 6, 0, DIVERSITY_STREAM).tolist()
    assert seeded_subset(4, 6, 0, EXAMPLES_STREAM).tolist() == [0, 1, 2, 3]
    settings = EvalSettings(split="val", num_inputs=4, num_outputs=4, fid_outputs_per_input=1, num_examples=1,
                            diversity_outputs=2, diversity_inputs=2, kid_subsets=2, seed=3)
    m = evaluate(model, tmp_path / "r", settings, data_dir=data, pipeline=pipe, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "r" / "per_input.jsonl").read_text().splitlines()]
    measured = [i for i, r in enumerate(rows) if r["methods"]["pixelnn"].get("diversity_lpips") is not None]
    assert measured == seeded_subset(4, 2, 3, DIVERSITY_STREAM).tolist()
    assert m["example_positions"] == seeded_subset(4, 1, 3, EXAMPLES_STREAM).tolist()
    assert "2 of the evaluated inputs (a random subset, seed 3" in m["protocol"]["diversity"]


def test_evaluate_writes_every_number(setup):
    root, model, data, pipe, metrics, fake = setup
    out = root / "report"
    assert sorted(p.name for p in out.iterdir()) == ["examples.npz", "metrics.json", "per_input.jsonl",
                                                     "spectra.npz", "spectrum.png"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["num_inputs"] == 3 and metrics["settings"]["num_outputs"] == 12
    assert set(metrics["methods"]) == {"pixelnn", "pix2pix", "stage1"}
    assert len(fake.calls) == 3 and all(c[1] == 12 for c in fake.calls)
    for name, s in metrics["methods"].items():
        assert 0 <= s["oracle_lpips"] <= s["rand1_lpips"] <= 1.5
        assert s["oracle_own_psnr"] >= s["oracle_psnr"] and s["oracle_own_ssim"] >= s["oracle_ssim"]
        assert s["faithfulness_psnr"] > 10  # superres: downsampled output vs the 4x4 input
        assert s["fid"] is not None and s["fid"] >= 0 and s["kid"] is not None
        assert s["spectral_distance_db"] >= 0
        assert s["num_generated"] == (2 * 3 if name != "stage1" else 3) and s["num_real"] == 4
    assert metrics["methods"]["stage1"]["rand1_lpips"] == metrics["methods"]["stage1"]["oracle_lpips"]
    assert "diversity_lpips" not in metrics["methods"]["stage1"]
    # coherence: PixelNN only, with the composition recorded (the pipeline's defaults)
    opts = metrics["settings"]["options"]
    assert opts["mode"] == "coherent" and opts["color"] == "rgb"
    # the pipeline's resolved options (mode defaults, descriptor) with the evaluation's outputs per input and seed
    assert opts == pipe.check_options(num_outputs=12, seed=0).to_dict()
    assert "mode" not in metrics["settings"] and "top_k" not in metrics["settings"]
    assert "seam_rate" in metrics["protocol"] and "'coherent'" in metrics["protocol"]["seam_rate"]
    assert 0 <= metrics["methods"]["pixelnn"]["seam_rate"] <= 1
    assert metrics["methods"]["pix2pix"]["seam_rate"] is None and metrics["methods"]["stage1"]["seam_rate"] is None
    assert metrics["methods"]["pixelnn"]["seam_visibility"] > -1 and "seam_visibility" in metrics["protocol"]
    assert metrics["methods"]["pix2pix"]["seam_visibility"] is None
    # Top-1 (issue 16): the output ranked first by its score, PixelNN only
    pn = metrics["methods"]["pixelnn"]
    assert pn["oracle_lpips"] <= pn["top1_lpips"] <= 1.5 and pn["top1_faithfulness"] > 10  # superres: PSNR to the input
    assert "top1_lpips" not in metrics["methods"]["pix2pix"] and "top1_lpips" not in metrics["methods"]["stage1"]
    assert "first by its score" in metrics["protocol"]["top1"] and "ranking_pixelnn" in metrics["seconds_per_input"]
    # the fake pix2pix is nearly collapsed: far less diverse than PixelNN's compositions
    assert metrics["methods"]["pix2pix"]["diversity_lpips"] < metrics["methods"]["pixelnn"]["diversity_lpips"]
    for key in ("synthesis_pixelnn", "synthesis_pix2pix", "fidelity_lpips_psnr_ssim", "fid_features", "total"):
        assert metrics["timings_seconds"][key] >= 0
    rows = [json.loads(line) for line in (out / "per_input.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows) and len(rows) == 3
    assert rows[0]["methods"]["pixelnn"]["num_outputs"] == 12
    mean_rand1 = np.mean([r["methods"]["pixelnn"]["rand1_lpips"] for r in rows])
    assert mean_rand1 == pytest.approx(metrics["methods"]["pixelnn"]["rand1_lpips"], abs=1e-5)
    assert all(0 <= r["methods"]["pixelnn"]["seam_rate"] <= 1 for r in rows)
    assert all(r["methods"][m]["seam_rate"] is None for r in rows for m in ("pix2pix", "stage1"))
    mean_seams = np.mean([r["methods"]["pixelnn"]["seam_rate"] for r in rows])
    assert mean_seams == pytest.approx(metrics["methods"]["pixelnn"]["seam_rate"], abs=1e-5)
    with np.load(out / "examples.npz") as ex:
        assert ex["pixelnn"].shape == (2, 8, 32, 32, 3) and ex["pix2pix"].shape == (2, 8, 32, 32, 3)
        assert ex["inputs"].shape == ex["photos"].shape == ex["stage1"].shape == ex["correspondence"].shape == (2, 32, 32, 3)
        assert ex["correspondence_index"].shape == (2,) and ((0 <= ex["correspondence_index"]) & (ex["correspondence_index"] < 8)).all()
    with np.load(out / "spectra.npz") as sp:
        assert set(sp.files) == {"freqs", "pixelnn", "pix2pix", "stage1", "photos"} and sp["freqs"].shape == (17,)


def test_evaluate_is_deterministic_and_refuses_to_overwrite(setup, tmp_path):
    root, model, data, pipe, metrics, fake = setup
    settings = EvalSettings(split="val", num_inputs=3, num_outputs=12, fid_outputs_per_input=2, num_examples=2,
                            diversity_outputs=5, kid_subsets=5)
    with pytest.raises(PixelNNError, match="already exists"):
        evaluate(model, root / "report", settings, data_dir=data, pix2pix=FakePix2Pix(), pipeline=pipe, progress=False)
    again = evaluate(model, tmp_path / "again", settings, data_dir=data, pix2pix=FakePix2Pix(), pipeline=pipe,
                     progress=False)
    for name in metrics["methods"]:
        for key in ("rand1_lpips", "oracle_lpips", "diversity_lpips", "fid", "kid", "spectral_distance_db"):
            assert again["methods"][name].get(key) == metrics["methods"][name].get(key), (name, key)


def test_seam_rate_of_the_global_mode_is_zero(setup, tmp_path):
    """Eq. 2 records each output's correspondences as one exemplar (its set's top rank) at the same positions:
    no pair of neighbours breaks that copy, so the seam rate is exactly 0 (by construction)."""
    root, model, data, pipe, metrics, fake = setup
    settings = EvalSettings(split="val", num_inputs=2, num_outputs=4, fid_outputs_per_input=1, num_examples=0,
                            diversity_outputs=4, kid_subsets=2, options=SynthesisOptions(mode="global", color="luma"))
    glob = evaluate(model, tmp_path / "global", settings, data_dir=data, pipeline=pipe, progress=False)
    assert glob["settings"]["options"]["mode"] == "global" and glob["settings"]["options"]["color"] == "luma"
    assert "'global'" in glob["protocol"]["seam_rate"]
    assert glob["methods"]["pixelnn"]["seam_rate"] == 0.0 and glob["methods"]["stage1"]["seam_rate"] is None
    rows = [json.loads(line) for line in (tmp_path / "global" / "per_input.jsonl").read_text().splitlines()]
    assert [r["methods"]["pixelnn"]["seam_rate"] for r in rows] == [0.0, 0.0]
    assert glob["methods"]["pixelnn"]["seam_visibility"] is None  # no seam: nothing to show
    # the matched outputs of the same model do break their copies
    assert metrics["methods"]["pixelnn"]["seam_rate"] > 0


def test_pixelnn_numbers_are_the_pipelines_for_those_options(setup):
    """Each input's PixelNN outputs are pipe(x, options with num_outputs and seed + position), as before the
    settings carried a SynthesisOptions (then: pipe(x, top_k, mode, color, num_outputs, seed + position))."""
    root, model, data, pipe, metrics, fake = setup
    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluate import fidelity

    split = Dataset(data).split("val")
    row = json.loads((root / "report" / "per_input.jsonl").read_text().splitlines()[0])
    pos = row["index"]
    res = pipe(np.array(split.inputs[pos]), top_k=11, mode="coherent", color="rgb", num_outputs=12, seed=0 + pos)
    fid = fidelity(res.outputs, np.array(split.photos[pos]), 0)
    assert row["methods"]["pixelnn"]["oracle_lpips"] == pytest.approx(fid["oracle_lpips"], abs=1e-6)
    assert row["methods"]["pixelnn"]["oracle_own_psnr"] == pytest.approx(fid["oracle_own_psnr"], abs=1e-5)
    # the pipeline returns the outputs best first: its first output is the evaluation's Top-1
    assert row["methods"]["pixelnn"]["top1_lpips"] == pytest.approx(fid["rand1_lpips"], abs=1e-6)
    assert row["methods"]["pixelnn"]["top1_grid_index"] == int(res.grid_index[0])


def test_invalid_mode_or_color_lists_the_valid_ones(setup, tmp_path, capsys):
    root, model, data, pipe, *_ = setup
    for field, valid in (("mode", mode_names()), ("color", COLORS)):
        with pytest.raises(PixelNNError, match="bogus") as e:
            EvalSettings(split="val", num_inputs=1, options=SynthesisOptions(**{field: "bogus"}))
        assert "\n" not in str(e.value) and all(v in str(e.value) for v in valid), str(e.value)
        with pytest.raises(PixelNNError, match="bogus"):  # the same through replace
            SynthesisOptions().replace(**{field: "bogus"})
        # an options file with a bad value: one line, exit 2, nothing written
        bad = tmp_path / f"bad-{field}.json"
        bad.write_text(json.dumps({field: "bogus"}))
        assert main(["evaluate", str(model), "--data", str(data), "--split", "val", "--options", str(bad),
                     "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "bogus" in err and all(v in err for v in valid), err
    with pytest.raises(PixelNNError, match="must be a SynthesisOptions"):
        evaluate(model, tmp_path / "x", EvalSettings(split="val", options={"mode": "coherent"}), data_dir=data,
                 pipeline=pipe, progress=False)
    assert not (tmp_path / "x").exists()
    for flag in ("--mode", "--color"):
        with pytest.raises(SystemExit) as exit_:  # argparse: choices are the registry's modes and the colours
            main(["evaluate", str(model), flag, "bogus", "--out", str(tmp_path / "x")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "bogus" in err and all(v in err for v in (mode_names() if flag == "--mode" else COLORS)), err


def test_select_inputs():
    assert select_inputs(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    pick = select_inputs(100, 10, 3)
    assert len(pick) == 10 and len(set(pick.tolist())) == 10 and (np.diff(pick) > 0).all()
    assert pick.tolist() == select_inputs(100, 10, 3).tolist() != select_inputs(100, 10, 4).tolist()
    with pytest.raises(PixelNNError, match="empty"):
        select_inputs(0, 10, 0)


def test_select_real_photos_is_a_seeded_random_subset():
    """Issue 18: --fid-real-photos N took the first N photos of the split (path order: one category of shoes)."""
    assert select_real_photos(5, None, 0).tolist() == select_real_photos(5, 9, 0).tolist() == [0, 1, 2, 3, 4]
    pick = select_real_photos(100, 10, 3)
    assert len(set(pick.tolist())) == 10 and (np.diff(pick) > 0).all() and pick.tolist() != list(range(10))
    assert pick.tolist() == select_real_photos(100, 10, 3).tolist() != select_real_photos(100, 10, 4).tolist()
    assert pick.tolist() != select_inputs(100, 10, 3).tolist()  # a stream of its own


def test_report_pages_reference_existing_images(setup, tmp_path, capsys):
    root, *_ = setup
    assert main(["report", str(root / "report"), "--out", str(tmp_path / "pages")]) == 0
    index = (tmp_path / "pages" / "index.html").read_text()
    assert "report.html" in index
    page = (tmp_path / "pages" / "report.html").read_text()
    assert "Rand-1" in page and "Oracle" in page and "pix2pix" in page and "FID" in page
    assert "<th>seam rate</th>" in page and "composition coherent, rgb" in page
    assert "<th>PixelNN seam rate</th>" in index and "<td>coherent, rgb</td>" in index
    assert "PixelNN (Top-1)" in page and "<th>PixelNN LPIPS (Top-1)</th>" in index
    srcs = re.findall(r"src='([^']+)'", page)
    assert "report/spectrum.png" in srcs and "report/example_01.png" in srcs and "report/example_02.png" in srcs
    for src in srcs:
        assert (tmp_path / "pages" / src).is_file(), src
    from PIL import Image

    strip = Image.open(tmp_path / "pages" / "report" / "example_01.png")
    # input, stage 1, 8 PixelNN, correspondence, 8 pix2pix, photo: 20 tiles of 32 px with 2-px gaps
    assert strip.size == (20 * 34 + 2, 36)


def test_report_reads_evaluations_without_seam_rate_or_mode(setup, tmp_path):
    """metrics.json written before the seam rate and the composition mode were recorded."""
    root, *_ = setup
    old = tmp_path / "old"
    shutil.copytree(root / "report", old)
    m = json.loads((old / "metrics.json").read_text())
    for s in m["methods"].values():
        del s["seam_rate"]
    del m["protocol"]["seam_rate"], m["settings"]["options"]
    (old / "metrics.json").write_text(json.dumps(m))
    index = main(["report", str(old), "--out", str(tmp_path / "pages")])
    assert index == 0
    page = (tmp_path / "pages" / "report.html").read_text()
    assert "<th>seam rate</th>" in page and "not measured in this evaluation" in page
    assert "<td>matched, rgb</td><td>" in (tmp_path / "pages" / "index.html").read_text()


def test_report_reads_evaluations_with_mode_and_color_in_settings(setup, tmp_path):
    """metrics.json written before issue 11: ``settings.mode`` / ``settings.color`` / ``settings.top_k``."""
    root, *_ = setup
    old = tmp_path / "old"
    shutil.copytree(root / "report", old)
    m = json.loads((old / "metrics.json").read_text())
    del m["settings"]["options"]
    m["settings"].update(mode="coherent", color="luma", top_k=11)
    (old / "metrics.json").write_text(json.dumps(m))
    assert main(["report", str(old), "--out", str(tmp_path / "pages")]) == 0
    page = (tmp_path / "pages" / "report.html").read_text()
    assert "composition coherent, luma" in page and "mode=coherent" in page
    assert "<td>coherent, luma</td><td>" in (tmp_path / "pages" / "index.html").read_text()


def test_cli_evaluate_runs_and_bad_input_exits_2(setup, tmp_path, capsys):
    root, model, data, *_ = setup
    code = main(["-q", "evaluate", str(model), "--data", str(data), "--split", "val", "--num-inputs", "2",
                 "--num-outputs", "6", "--fid-outputs-per-input", "1", "--num-examples", "1", "--threads", "1",
                 "--mode", "global", "--color", "luma", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "pixelnn: LPIPS Rand-1" in out and "stage1:" in out and "pix2pix" not in out
    assert "seam rate 0.000" in out
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert written["num_inputs"] == 2
    assert (written["settings"]["options"]["mode"], written["settings"]["options"]["color"]) == ("global", "luma")
    assert written["settings"]["num_outputs"] == 6 and written["settings"]["options"]["num_outputs"] == 6
    bad = [["evaluate", str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
           ["evaluate", str(model), "--data", str(data), "--split", "bogus", "--out", str(tmp_path / "x")],
           ["evaluate", str(model), "--out", str(tmp_path / "x")],  # the tiny model names no dataset
           ["evaluate", str(model), "--data", str(data), "--split", "val", "--num-inputs", "0", "--out",
            str(tmp_path / "x")],
           ["evaluate", str(model), "--data", str(data), "--split", "val", "--pix2pix", str(tmp_path / "nope"),
            "--out", str(tmp_path / "x")],
           ["evaluate", str(model), "--data", str(data), "--split", "val", "--device", "cuda:7", "--out",
            str(tmp_path / "x")],  # no such GPU here (this machine has fewer than 8, or none)
           ["evaluate", str(model), "--data", str(data), "--split", "val", "--device", "tpu", "--out",
            str(tmp_path / "x")],
           ["evaluate", str(model), "--data", str(data), "--split", "val", "--vote-size", "2", "--out",
            str(tmp_path / "x")],
           ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "pages")]]
    for argv in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error:" in err, (argv, err)
    assert not (tmp_path / "x").exists()


def test_cli_evaluate_records_every_synthesis_option(setup, tmp_path, capsys):
    """``--mode coherent --vote-size 3 --chroma-weight 0.5`` and an ``--options FILE`` reach the pipeline and
    metrics.json; evaluate's own --num-outputs / --seed stay the outputs per input and the seed."""
    root, model, data, *_ = setup
    base = tmp_path / "opts.json"
    base.write_text(SynthesisOptions(top_k=6, windows=(1, 7), sets=((1,), (1, 2))).to_json())
    code = main(["-q", "evaluate", str(model), "--data", str(data), "--split", "val", "--num-inputs", "1",
                 "--num-outputs", "3", "--seed", "5", "--fid-outputs-per-input", "1", "--num-examples", "1",
                 "--threads", "1", "--device", "cpu", "--options", str(base), "--mode", "coherent",
                 "--vote-size", "3", "--chroma-weight", "0.5", "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())
    opts = written["settings"]["options"]
    assert (opts["mode"], opts["vote_size"], opts["chroma_weight"]) == ("coherent", 3, 0.5)
    assert (opts["top_k"], opts["windows"], opts["sets"]) == (6, [1, 7], [[1], [1, 2]])
    assert opts["patch_size"] is not None  # resolved: the coherent mode's default filled in
    assert (opts["num_outputs"], opts["seed"]) == (3, 5) and written["settings"]["seed"] == 5
    assert "'coherent'" in written["protocol"]["seam_rate"]
    assert written["methods"]["pixelnn"]["num_outputs"] == 3


def test_evaluate_parser_keeps_its_own_seed_and_num_outputs():
    from pixelnn.cli import build_parser

    args = build_parser().parse_args(["evaluate", "m", "--out", "r"])
    assert (args.num_outputs, args.seed, args.device, args.mode, args.options) == (72, 0, "auto", None, None)
    syn = build_parser().parse_args(["synthesize", "x.png", "--model", "m", "--out", "o"])
    assert (syn.num_outputs, syn.seed) == (None, None)  # synthesize: the options' flags, "not given"
