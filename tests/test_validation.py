"""Options validated where they are parsed (issue 15, part 1): every bad value is a one-line error, exit status 2.

The CLI checks each numeric flag right after parsing (:data:`pixelnn.cli.NUMERIC_FLAGS`), before it reads a file,
so most cases here name paths that do not exist: the flag's message must come first. The config objects
(:class:`TaskConfig`, :class:`TrainConfig`, :class:`RegressorConfig`, the pix2pix config) and
:class:`SynthesisOptions` check themselves too, for callers of the library.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

from pixelnn.cli import NUMERIC_FLAGS, build_parser, check_against_model, main, synthesis_options
from pixelnn.config import RegressorConfig, TaskConfig, TrainConfig, check_number
from pixelnn.errors import PixelNNError
from pixelnn.options import SynthesisOptions, parse_sets, parse_windows
from tests.conftest import make_tiny_library, make_tiny_model_dir
from tests.test_cli import _one_line_error

NOWHERE = "/nonexistent/pixelnn-validation"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 32 x 32 superres model folder (config and random weights, no library)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("model"))


def _run(argv, capsys) -> str:
    """``pixelnn -q ARGV``: exit status 2 and one line on stderr (returned), no traceback."""
    rc = main(["-q", *argv])
    line = _one_line_error(capsys)
    assert rc == 2, line
    assert "Traceback" not in line
    return line


# ------------------------------------------------------------------------------------ CLI, per subcommand
SYN = ["synthesize", "in.png", "--model", NOWHERE, "--out", NOWHERE + "/out"]
BAD_FLAGS = [
    # synthesize: windows and sets (parsed text)
    (SYN + ["--windows", "garbage"], "invalid window 'garbage'"),
    (SYN + ["--windows", "1.5"], "invalid window '1.5'"),
    (SYN + ["--windows", "1,,7"], "invalid windows '1,,7': an empty item"),
    (SYN + ["--windows", "0"], "invalid window 0"),
    (SYN + ["--windows", "-"], "invalid window '-'"),
    (SYN + ["--windows", "1--2"], "invalid window '1--2'"),
    (SYN + ["--windows", ","], "windows must name at least one window"),
    (SYN + ["--sets", "garbage"], "invalid exemplar set 'garbage'"),
    (SYN + ["--sets", "1.5"], "invalid exemplar set '1.5'"),
    (SYN + ["--sets", "1,,7"], "invalid sets '1,,7': an empty item"),
    (SYN + ["--sets", "0"], "invalid exemplar set '0': 1-based ranks go from 1 to 10000"),
    (SYN + ["--sets", "-"], "invalid exemplar set '-'"),
    (SYN + ["--sets", "1--2"], "invalid exemplar set '1--2'"),
    (SYN + ["--sets", "3-1"], "ranges go up"),
    (SYN + ["--sets", "1-99999999"], "ranks go from 1 to 10000"),
    # synthesize: numbers
    (SYN + ["--num-outputs", "0"], "--num-outputs must be an integer >= 1, got 0"),
    (SYN + ["--num-outputs", "-1"], "--num-outputs must be an integer >= 1, got -1"),
    (SYN + ["--seed", "-1"], "--seed must be an integer between 0 and 2**63 - 1, got -1"),
    (SYN + ["--vote-size", "4"], "--vote-size must be an odd integer >= 1, got 4"),
    (SYN + ["--vote-size", "-1"], "--vote-size must be an odd integer >= 1, got -1"),
    (SYN + ["--patch-size", "2"], "--patch-size must be an odd integer >= 1, got 2"),
    (SYN + ["--highpass-sigma", "inf"], "--highpass-sigma must be a number >= 0, got inf"),
    (SYN + ["--highpass-sigma", "nan"], "--highpass-sigma must be a number >= 0, got nan"),
    (SYN + ["--highpass-sigma", "-1"], "--highpass-sigma must be a number >= 0, got -1"),
    (SYN + ["--chroma-weight", "1.5"], "--chroma-weight must be a number between 0 and 1, got 1.5"),
    (SYN + ["--chroma-weight", "nan"], "--chroma-weight must be a number between 0 and 1, got nan"),
    (SYN + ["--pca-dims", "-1"], "--pca-dims must be an integer >= 0, got -1"),
    (SYN + ["--top-k", "0"], "--top-k must be an integer between 1 and 10000, got 0"),
    (SYN + ["--batch-size", "0"], "--batch-size must be an integer between 1 and 65536, got 0"),
    (SYN + ["--retries", "-1"], "--retries must be an integer >= 0, got -1"),
    (SYN + ["--num-workers", "0"], "--num-workers must be an integer >= 1, got 0"),
    (SYN + ["--cpus-per-worker", "nan"], "--cpus-per-worker must be a number > 0, got nan"),
    (SYN + ["--cpus-per-worker", "0"], "--cpus-per-worker must be a number > 0, got 0"),
    (SYN + ["--gpus-per-worker", "inf"], "--gpus-per-worker must be a number >= 0, got inf"),
    # prepare: before any photo is decoded (the source does not even exist)
    (["prepare", NOWHERE, "--task", "edges", "--out", NOWHERE + "/d", "--hed-scale", "0"],
     "--hed-scale must be a number > 0 and <= 8, got 0"),
    (["prepare", NOWHERE, "--task", "edges", "--out", NOWHERE + "/d", "--hed-scale", "-1"], "--hed-scale must be"),
    (["prepare", NOWHERE, "--task", "edges", "--out", NOWHERE + "/d", "--hed-scale", "nan"], "--hed-scale must be"),
    (["prepare", NOWHERE, "--task", "edges", "--out", NOWHERE + "/d", "--hed-scale", "inf"], "--hed-scale must be"),
    (["prepare", NOWHERE, "--task", "superres", "--out", NOWHERE + "/d", "--size", "8"],
     "--size must be an integer between 16 and 4096, got 8"),
    (["prepare", NOWHERE, "--task", "superres", "--out", NOWHERE + "/d", "--factor", "0"], "--factor must be"),
    (["prepare", NOWHERE, "--task", "superres", "--out", NOWHERE + "/d", "--val-fraction", "nan"],
     "--val-fraction must be a number between 0 and 1, got nan"),
    (["prepare", NOWHERE, "--task", "superres", "--out", NOWHERE + "/d", "--test-fraction", "-0.1"],
     "--test-fraction must be"),
    (["prepare", NOWHERE, "--task", "superres", "--out", NOWHERE + "/d", "--limit", "0"], "--limit must be"),
    (["prepare", NOWHERE, "--task", "superres", "--out", NOWHERE + "/d", "--threads", "0"],
     "--threads must be an integer between 1 and 1024, got 0"),
    # train
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--batch-size", "-1"], "--batch-size must be an integer between 1"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--batch-size", "0"], "--batch-size must be an integer between 1"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--lr", "nan"], "--lr must be a number > 0 and <= 1, got nan"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--lr", "inf"], "--lr must be a number > 0 and <= 1, got inf"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--lr", "0"], "--lr must be a number > 0 and <= 1, got 0"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--lr", "1e9"], "--lr must be a number > 0 and <= 1"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--val-every", "0"], "--val-every must be an integer >= 1, got 0"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--sample-every", "-1"], "--sample-every must be an integer >= 0"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--steps", "-5"], "--steps must be an integer >= 0, got -5"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--minutes", "-1"], "--minutes must be a number > 0, got -1"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--minutes", "nan"], "--minutes must be a number > 0, got nan"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--depth", "13"], "--depth must be an integer between 0 and 12"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--depth", "-1"], "--depth must be an integer between 0 and 12"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--base-channels", "0"], "--base-channels must be an integer"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--perceptual-weight", "nan"], "--perceptual-weight must be"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--seed", "-1"], "--seed must be an integer between 0"),
    (["train", NOWHERE, "--out", NOWHERE + "/m", "--threads", "0"], "--threads must be an integer between 1 and 1024"),
    # baseline-train
    (["baseline-train", NOWHERE, "--out", NOWHERE + "/p", "--batch-size", "0"], "--batch-size must be"),
    (["baseline-train", NOWHERE, "--out", NOWHERE + "/p", "--minutes", "inf"], "--minutes must be a number > 0"),
    (["baseline-train", NOWHERE, "--out", NOWHERE + "/p", "--steps", "-1"], "--steps must be an integer >= 0"),
    # index, library
    (["index", NOWHERE, "--model", NOWHERE, "--pca-dims", "-1"], "--pca-dims must be an integer >= 0, got -1"),
    (["index", NOWHERE, "--model", NOWHERE, "--global-dims", "-1"], "--global-dims must be an integer >= 0"),
    (["index", NOWHERE, "--model", NOWHERE, "--block-size", "0"], "--block-size must be an integer >= 1, got 0"),
    (["library", "upgrade", NOWHERE, NOWHERE + "2", "--global-dims", "-5"], "--global-dims must be an integer >= 0"),
    # labels, transfer
    (["labels", "foreground", NOWHERE, "--out", NOWHERE + "/l", "--threshold", "256"],
     "--threshold must be an integer between 0 and 255, got 256"),
    (["labels", "foreground", NOWHERE, "--out", NOWHERE + "/l", "--threshold", "-1"], "--threshold must be"),
    (["transfer", NOWHERE, "--labels", NOWHERE, "--alpha", "1.5"], "--alpha must be a number between 0 and 1, got 1.5"),
    (["transfer", NOWHERE, "--labels", NOWHERE, "--alpha", "nan"], "--alpha must be a number between 0 and 1"),
    # evaluate
    (["evaluate", NOWHERE, "--out", NOWHERE + "/r", "--num-inputs", "0"], "--num-inputs must be an integer >= 1"),
    (["evaluate", NOWHERE, "--out", NOWHERE + "/r", "--num-outputs", "0"], "--num-outputs must be an integer >= 1"),
    (["evaluate", NOWHERE, "--out", NOWHERE + "/r", "--seed", "-1"], "--seed must be an integer between 0"),
    (["evaluate", NOWHERE, "--out", NOWHERE + "/r", "--fid-outputs-per-input", "0"], "--fid-outputs-per-input must"),
    (["evaluate", NOWHERE, "--out", NOWHERE + "/r", "--fid-real-photos", "1"], "--fid-real-photos must be an integer"),
    (["evaluate", NOWHERE, "--out", NOWHERE + "/r", "--faithfulness-outputs-per-input", "0"], "--faithfulness-outputs"),
    (["evaluate", NOWHERE, "--out", NOWHERE + "/r", "--num-examples", "-1"], "--num-examples must be an integer >= 0"),
    (["evaluate", NOWHERE, "--out", NOWHERE + "/r", "--vote-size", "2"], "--vote-size must be an odd integer >= 1"),
    # serve: before the model loads (it does not exist)
    (["serve", "--model", NOWHERE, "--port", "99999"], "--port must be an integer between 1 and 65535, got 99999"),
    (["serve", "--model", NOWHERE, "--port", "-1"], "--port must be an integer between 1 and 65535, got -1"),
    (["serve", "--model", NOWHERE, "--max-upload-mb", "nan"], "--max-upload-mb must be a number > 0, got nan"),
    (["serve", "--model", NOWHERE, "--max-upload-mb", "0"], "--max-upload-mb must be a number > 0, got 0"),
    (["serve", "--model", NOWHERE, "--max-upload-mp", "inf"], "--max-upload-mp must be a number > 0, got inf"),
    (["serve", "--model", NOWHERE, "--threads", "0"], "--threads must be an integer between 1 and 1024"),
    # demo
    (["demo", "--out", NOWHERE, "--minutes", "0"], "--minutes must be a number > 0, got 0"),
    (["demo", "--out", NOWHERE, "--minutes", "nan"], "--minutes must be a number > 0, got nan"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS, ids=[" ".join(a[-2:]) + f" ({a[0]})" for a, _ in BAD_FLAGS])
def test_bad_flag_values_are_one_line_errors(argv, message, capsys):
    assert message in _run(argv, capsys)


def test_every_numeric_flag_is_checked():
    """Each ``type=int`` / ``type=float`` flag of every subcommand has bounds in NUMERIC_FLAGS."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    unchecked = [f"{name} --{a.dest}" for name, p in subparsers.items() for a in p._actions
                 if a.type in (int, float) and a.dest not in NUMERIC_FLAGS]
    assert unchecked == []


@pytest.mark.parametrize("argv, message", [
    (["--vote-size", "1001"], "--vote-size must be an odd integer between 1 and 31, got 1001"),
    (["--vote-size", "33"], "--vote-size must be an odd integer between 1 and 31, got 33"),
    (["--patch-size", "35", "--mode", "coherent"], "--patch-size must be an odd integer between 1 and 31, got 35"),
    (["--highpass-sigma", "1e9"], "--highpass-sigma must be a number between 0 and 32, got 1000000000.0"),
    (["--windows", "1,64"], "--windows must be sides between 1 and 32 or 'whole' (outputs are 32x32), got 64"),
])
def test_synthesis_options_the_model_cannot_take(tiny_model, tmp_path, argv, message, capsys):
    """Bounds that depend on the model's output size: refused before the model loads."""
    line = _run(["synthesize", str(tmp_path / "in.png"), "--model", str(tiny_model), "--out", str(tmp_path / "o"),
                 *argv], capsys)
    assert message in line
    line = _run(["evaluate", str(tiny_model), "--out", str(tmp_path / "r"), *argv], capsys)
    assert message in line


def test_the_largest_values_the_model_takes_pass(tiny_model):
    parser = build_parser()
    args = parser.parse_args(["synthesize", "x", "--model", "m", "--out", "o", "--vote-size", "31",
                              "--highpass-sigma", "32", "--windows", "1,32,whole", "--patch-size", "31"])
    check_against_model(synthesis_options(args), tiny_model)  # no error
    check_against_model(synthesis_options(args), NOWHERE)  # not a model: left to the loader's message


def test_sets_ranges_mean_ranges_and_the_defaults_stay():
    args = build_parser().parse_args(["synthesize", "x", "--model", "m", "--out", "o", "--sets", "1-3,2-5,4,1+7"])
    options = synthesis_options(args)
    assert options.sets == ((1, 2, 3), (2, 3, 4, 5), (4,), (1, 7))
    assert [s.ranks for s in options.output_specs()[::4]] == [(0, 1, 2), (1, 2, 3, 4), (3,), (0, 6)]
    # the authors' 18 sets are None in the options (not a parsed text), and written out they parse back the same
    from pixelnn.matching import default_exemplar_sets, default_output_specs

    assert SynthesisOptions().sets is None and SynthesisOptions().output_specs() == default_output_specs()
    authors = "1,2,3,4,5,6,7,8,9,10,1-3,3-5,5-7,7-9,9-11,1-5,4-8,7-11"
    assert [tuple(r - 1 for r in s) for s in parse_sets(authors)] == default_exemplar_sets()


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_out_that_is_a_file_is_a_one_line_error(tmp_path, where, capsys):
    f = tmp_path / "f.txt"
    f.write_text("x")
    out = f if where == "file" else f / "sub"
    for argv in (["synthesize", "in.png", "--model", NOWHERE, "--out", str(out)],
                 ["train", NOWHERE, "--out", str(out)], ["report", NOWHERE, "--out", str(out)]):
        assert "is a file, not a folder" in _run(argv, capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_an_unwritable_folder_is_a_one_line_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert "permission denied" in _run(["report", NOWHERE, "--out", str(locked / "pages")], capsys)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ValueError("bad\nsecond line"),
                                   UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")])
def test_unexpected_errors_are_one_line_errors(monkeypatch, tmp_path, error, capsys):
    """The last line of defence: an OSError, ValueError or UnicodeError a check missed is still one line."""
    import pixelnn.report

    def boom(*a, **k):
        raise error

    monkeypatch.setattr(pixelnn.report, "report_command", boom)
    line = _run(["report", str(tmp_path), "--out", str(tmp_path / "pages")], capsys)
    assert line.startswith("pixelnn report: error: ") and type(error).__name__ in line


def test_file_names_that_are_not_utf8(tmp_path, capsys):
    """A non-UTF-8 photo name in a source folder is left out (and counted); one given to synthesize works."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        name = os.fsdecode(b"p%d\xff.png" % i) if i % 3 == 0 else f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photos / name)
    assert main(["-q", "prepare", str(photos), "--task", "superres", "--size", "16", "--factor", "4",
                 "--out", str(tmp_path / "d")]) == 0
    assert "skipped: name not UTF-8 2" in capsys.readouterr().out

    model, _ = make_tiny_library(tmp_path / "lib")
    bad = os.fsdecode(b"in\xfe.png")
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(tmp_path / bad)
    assert main(["-q", "synthesize", str(tmp_path / bad), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--num-outputs", "2"]) == 0
    assert (tmp_path / "o" / os.fsdecode(b"in\xfe") / "manifest.json").is_file()


# ------------------------------------------------------------------------------------ training
def test_resume_refuses_a_changed_architecture(tiny_superres_dataset, tmp_path, capsys):
    out = tmp_path / "m"
    base = ["-q", "train", str(tiny_superres_dataset), "--out", str(out), "--batch-size", "2", "--val-every", "1",
            "--sample-every", "0"]
    assert main([*base, "--steps", "1", "--base-channels", "4", "--depth", "1"]) == 0
    capsys.readouterr()
    line = _run([*base[1:], "--steps", "2", "--base-channels", "8"], capsys)
    assert "cannot resume" in line and "base_channels 8 asked for, the checkpoint has 4" in line
    line = _run([*base[1:], "--steps", "2", "--depth", "2", "--norm", "group"], capsys)
    assert "depth 2 asked for, the checkpoint has 1" in line
    assert "norm group asked for, the checkpoint has batch" in line
    # the same architecture (or none named) resumes
    assert main([*base, "--steps", "2", "--base-channels", "4"]) == 0


def test_depth_beyond_the_photo_size(tiny_superres_dataset, tmp_path, capsys):
    line = _run(["train", str(tiny_superres_dataset), "--out", str(tmp_path / "m"), "--depth", "10"], capsys)
    assert "depth for 32x32 photos must be an integer between 0 and 5, got 10" in line


def test_a_diverged_training_stops_with_an_error(tiny_superres_dataset, tmp_path, monkeypatch, capsys):
    """A non-finite loss stops the training (exit 2), before that step is saved."""
    import torch.nn.functional as F

    real_mse = F.mse_loss
    monkeypatch.setattr(F, "mse_loss", lambda a, b, *k, **kw: real_mse(a, b, *k, **kw) * math.nan)
    out = tmp_path / "m"
    line = _run(["train", str(tiny_superres_dataset), "--out", str(out), "--steps", "3", "--batch-size", "2",
                 "--base-channels", "4", "--depth", "1", "--val-every", "1", "--sample-every", "0"], capsys)
    assert "training diverged: the loss is nan at step 1 (learning rate 0.002)" in line
    assert not (out / "regressor.safetensors").exists()


def test_check_finite_loss():
    from pixelnn.train_loop import check_finite_loss

    check_finite_loss(0.5, 0, 1e-3)
    for bad in (math.nan, math.inf):
        with pytest.raises(PixelNNError, match="training diverged"):
            check_finite_loss(bad, 4, 1e-3)


# ------------------------------------------------------------------------------------ the objects themselves
@pytest.mark.parametrize("kwargs, message", [
    ({"hed_scale": 0}, "hed scale must be a number > 0 and <= 8, got 0"),
    ({"hed_scale": math.nan}, "hed scale must be"),
    ({"hed_scale": math.inf}, "hed scale must be"),
    ({"size": 8}, "size must be an integer between 16 and 4096, got 8"),
    ({"size": 96.5}, "size must be an integer"),
    ({"factor": 0}, "factor must be an integer between 1 and 96, got 0"),
    ({"factor": 7}, "superres factor 7 must divide size 96"),
    ({"name": "colour"}, "invalid task 'colour'; valid: superres, edges, normals, paired"),
])
def test_task_config_checks_itself(kwargs, message):
    with pytest.raises(PixelNNError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TaskConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": -1}, "batch size must be an integer between 1 and 65536, got -1"),
    ({"batch_size": 0}, "batch size must be"),
    ({"lr": math.nan}, "learning rate must be a number > 0 and <= 1, got nan"),
    ({"lr": 1e9}, "learning rate must be"),
    ({"lr": 0}, "learning rate must be"),
    ({"val_every": 0}, "val every must be an integer >= 1, got 0"),
    ({"sample_every": -1}, "sample every must be an integer >= 0"),
    ({"max_steps": -5}, "max steps must be an integer >= 0, got -5"),
    ({"minutes": -1}, "minutes must be a number > 0, got -1"),
    ({"minutes": math.inf}, "minutes must be"),
    ({"seed": -1}, "seed must be an integer between 0"),
    ({"num_threads": 0}, "threads must be an integer between 1 and 1024"),
    ({"weight_decay": math.nan}, "weight decay must be a number >= 0"),
    ({"perceptual_weight": -1}, "perceptual weight must be a number >= 0, got -1"),
    ({"clock": "sundial"}, "invalid clock 'sundial'; valid: wall, cpu"),
])
def test_train_config_checks_itself(kwargs, message):
    with pytest.raises(PixelNNError, match=message.replace("(", r"\(")):
        TrainConfig(**kwargs)


def test_configs_accept_their_defaults_and_json_round_trips():
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    assert TrainConfig(max_steps=0).max_steps == 0  # 0 steps: save the start as is (fine-tuning from init_from)
    assert TaskConfig.from_dict(TaskConfig(name="edges", hed_scale=1).to_dict()).hed_scale == 1
    assert RegressorConfig.from_dict(RegressorConfig().to_dict()) == RegressorConfig()
    assert RegressorConfig(size=96).max_depth == 6 and RegressorConfig(size=32).max_depth == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"base_channels": 0}, "base channels must be an integer between 1 and 1024, got 0"),
    ({"depth": 13}, "depth must be an integer between 0 and 12, got 13"),
    ({"norm": "layer"}, "invalid norm 'layer'; valid: batch, group, none"),
])
def test_regressor_config_checks_itself(kwargs, message):
    with pytest.raises(PixelNNError, match=message):
        RegressorConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": math.nan}, "learning rate must be"), ({"batch_size": 0}, "batch size must be"),
    ({"dropout": 1.5}, "dropout must be a number between 0 and 1"), ({"max_steps": -1}, "max steps must be"),
    ({"minutes": 0}, "minutes must be a number > 0"),
])
def test_pix2pix_config_checks_itself(kwargs, message):
    from pixelnn.baselines.pix2pix import Pix2PixConfig

    with pytest.raises(PixelNNError, match=message):
        Pix2PixConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_outputs": 0}, "num_outputs must be an integer >= 1, got 0"),
    ({"num_outputs": 2.5}, "num_outputs must be an integer >= 1, got 2.5"),
    ({"seed": -1}, "seed must be an integer between 0 and 2**63 - 1, got -1"),
    ({"seed": math.nan}, "seed must be an integer"),
    ({"vote_size": 4}, "vote_size must be an odd integer >= 1, got 4"),
    ({"vote_size": math.inf}, "vote_size must be an odd integer"),
    ({"patch_size": 0}, "patch_size must be an odd integer >= 1, got 0"),
    ({"highpass_sigma": math.nan}, "highpass_sigma must be a number >= 0, got nan"),
    ({"highpass_sigma": math.inf}, "highpass_sigma must be a number >= 0, got inf"),
    ({"chroma_weight": -0.1}, "chroma_weight must be a number between 0 and 1"),
    ({"pca_dims": -1}, "pca_dims must be an integer >= 0"),
    ({"top_k": 0}, "top_k must be an integer between 1 and 10000"),
    ({"like_k": 10**6}, "like_k must be an integer between 1 and 10000"),
    ({"windows": (7.5,)}, "invalid window 7.5"),
    ({"windows": (math.nan,)}, "invalid window nan"),
    ({"windows": ("0",)}, "invalid window 0"),
    ({"sets": ((0, 1),)}, "a set's 1-based rank must be an integer between 1 and 10000, got 0"),
    ({"sets": ((1.5,),)}, "a set's 1-based rank must be an integer"),
    ({"vote_size": True}, "vote_size must be an odd integer >= 1, got True"),
])
def test_synthesis_options_check_themselves(kwargs, message):
    with pytest.raises(PixelNNError, match=message.replace("*", r"\*")):
        SynthesisOptions(**kwargs)


def test_synthesis_options_from_json_keep_their_types():
    o = SynthesisOptions.from_dict({"vote_size": 3.0, "pca_dims": 16.0, "num_outputs": 4.0, "seed": 2.0,
                                    "windows": [1, "7", "whole"], "sets": [[1.0, 2]]})
    assert (o.vote_size, o.pca_dims, o.num_outputs, o.seed, o.windows, o.sets) == (3, 16, 4, 2, (1, 7, None), ((1, 2),))
    assert all(isinstance(v, int) for v in (o.vote_size, o.pca_dims, o.num_outputs, o.seed))
    assert SynthesisOptions.from_dict(o.to_dict()) == o


def test_check_size():
    SynthesisOptions(vote_size=95, patch_size=95, highpass_sigma=96, windows=(1, 96, None)).check_size(96)
    with pytest.raises(PixelNNError, match="vote_size must be an odd integer between 1 and 95, got 97"):
        SynthesisOptions(vote_size=97).check_size(96)
    with pytest.raises(PixelNNError, match="--vote-size must be an odd integer between 1 and 95, got 1001"):
        SynthesisOptions(vote_size=1001).check_size(96, name=lambda f: "--" + f.replace("_", "-"))
    with pytest.raises(PixelNNError, match="highpass_sigma must be a number between 0 and 96"):
        SynthesisOptions(highpass_sigma=1e9).check_size(96)
    with pytest.raises(PixelNNError, match="windows must be sides between 1 and 32"):
        SynthesisOptions(windows=(33,)).check_size(32)


def test_the_pipeline_checks_options_against_its_size(tmp_path):
    from pixelnn.pipeline import PixelNNPipeline

    model, _ = make_tiny_library(tmp_path)
    pipe = PixelNNPipeline.from_model_dir(model)
    with pytest.raises(PixelNNError, match="vote_size must be an odd integer between 1 and 31, got 33"):
        pipe.check_options(vote_size=33)
    with pytest.raises(PixelNNError, match="patch_size must be an odd integer between 1 and 31"):
        pipe.check_options(mode="coherent", patch_size=41)
    assert pipe.check_options(vote_size=31).vote_size == 31


@pytest.mark.parametrize("text, sets", [
    ("1-3,2-5", ((1, 2, 3), (2, 3, 4, 5))), ("1, 2 ,1-3", ((1,), (2,), (1, 2, 3))), ("#1-5", ((1, 2, 3, 4, 5),)),
    ("1+4;1-3+7", ((1, 4), (1, 2, 3, 7))), ("2-2,1+1", ((2,), (1,))),
])
def test_parse_sets(text, sets):
    assert parse_sets(text) == sets


@pytest.mark.parametrize("text", ["garbage", "1.5", "1,,7", "0", "-", "1--2", "1-", "-3", "3-1", "1,", ",", "",
                                  "1-2-3", "+1", "1e3"])
def test_parse_sets_refuses(text):
    with pytest.raises(PixelNNError):
        parse_sets(text)


@pytest.mark.parametrize("text, windows", [
    ("1,7,11,whole", (1, 7, 11, None)), ("1 whole", (1, None)), ("1, 7x7 ; 11", (1, 7, 11)), ("WHOLE", (None,)),
])
def test_parse_windows(text, windows):
    assert SynthesisOptions(windows=parse_windows(text)).windows == windows


@pytest.mark.parametrize("text", ["garbage", "1.5", "1,,7", "0", "-", "1--2", "7x8", "1,", " , ", "", "-1", "1e3"])
def test_parse_windows_refuses(text):
    with pytest.raises(PixelNNError):
        SynthesisOptions(windows=parse_windows(text))


def test_check_number():
    assert check_number("x", 3.0, 1, integer=True) == 3 and isinstance(check_number("x", 3.0, 1, integer=True), int)
    assert check_number("x", np.int64(5), 1, 9, odd=True) == 5 and check_number("x", 0.5, 0, 1) == 0.5
    for value, kwargs, message in [
        (1001, {"lo": 1, "hi": 95, "odd": True}, "x must be an odd integer between 1 and 95, got 1001"),
        (0, {"lo": 0, "hi": 1, "above": True}, "x must be a number > 0 and <= 1, got 0"),
        (-1, {"lo": 0, "integer": True}, "x must be an integer >= 0, got -1"),
        (math.inf, {}, "x must be a finite number, got inf"),
        ("3", {"lo": 0}, "x must be a number >= 0, got '3'"),
        (None, {"hi": 2}, "x must be a number <= 2, got None"),
    ]:
        with pytest.raises(PixelNNError) as e:
            check_number("x", value, **kwargs)
        assert str(e.value) == message
