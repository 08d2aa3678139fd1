"""The command line: one-line errors with a non-zero exit, and a small end-to-end run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from pixelnn.cli import main
from pixelnn.data.dataset import Dataset
from tests.conftest import synthetic_photos


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_empty_folder_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["-q", "prepare", str(tmp_path / "empty"), "--task", "superres", "--out", str(tmp_path / "d")]) == 2
    assert "no images found" in _one_line_error(capsys)
    assert not (tmp_path / "d").exists()


def test_train_on_non_dataset_is_refused(tmp_path, capsys):
    assert main(["-q", "train", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "not a PixelNN dataset" in _one_line_error(capsys)


def test_train_perceptual_and_init_from_options(tiny_superres_dataset, tmp_path, capsys):
    from pixelnn.cli import build_parser

    args = build_parser().parse_args(["train", "d", "--out", "m", "--perceptual-weight", "0.1",
                                      "--perceptual-layers", "relu1_2,relu2_2", "--init-from", "models/a"])
    assert (args.perceptual_weight, args.perceptual_layers, args.init_from) == (0.1, "relu1_2,relu2_2", "models/a")
    defaults = build_parser().parse_args(["train", "d", "--out", "m"])
    assert defaults.perceptual_weight == 0.0 and defaults.init_from is None
    assert main(["-q", "train", str(tiny_superres_dataset), "--out", str(tmp_path / "m"),
                 "--init-from", str(tmp_path / "nowhere")]) == 2
    assert "no such model folder" in _one_line_error(capsys)
    assert main(["-q", "train", str(tiny_superres_dataset), "--out", str(tmp_path / "m"),
                 "--perceptual-weight", "-1"]) == 2
    assert "--perceptual-weight must be a number >= 0, got -1" in _one_line_error(capsys)


def test_prepare_then_train_end_to_end(tmp_path, capsys):
    photos = tmp_path / "photos" / "red"
    photos.mkdir(parents=True)
    for i, im in enumerate(synthetic_photos(40, 40)):
        Image.fromarray(im).save(photos / f"{i:03d}.png")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    data, model = tmp_path / "data", tmp_path / "model"
    assert main(["-q", "prepare", str(tmp_path / "photos"), "--task", "superres", "--size", "32", "--factor", "4",
                 "--out", str(data), "--val-fraction", "0.2", "--test-fraction", "0.1"]) == 0
    manifest = json.loads((data / "dataset.json").read_text())
    assert manifest["input_shape"] == [8, 8, 3] and sum(manifest["counts"].values()) == 40
    assert main(["-q", "train", str(data), "--out", str(model), "--steps", "5", "--batch-size", "4",
                 "--base-channels", "8", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "trained 5 steps" in out and "bicubic" in out
    assert (model / "regressor.safetensors").is_file()
    # Running again resumes: the step budget is already spent, so no new steps are taken.
    assert main(["-q", "train", str(data), "--out", str(model), "--steps", "5"]) == 0
    assert "trained 5 steps" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_writes_a_page(tmp_path):
    from pixelnn.demo import run_demo

    r = run_demo(tmp_path / "demo", minutes=0.05, progress=False, limit=120)
    html = r.page.read_text()
    assert "results.png" in html and (tmp_path / "demo" / "results.png").is_file()
    assert np.asarray(Image.open(tmp_path / "demo" / "results.png")).shape[2] == 3
    # every figure on the page exists and is explained in (at least) one sentence
    figures = re.findall(r"<img class='grid' src='([^']+)'", html)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert {"results.png", "stage2.png", "correspondence.png", "control.png", "loss.png"} <= set(figures)
    assert all((tmp_path / "demo" / f).is_file() for f in figures)
    assert len(captions) == len(figures) and all(c.strip().endswith(".") and len(c.split()) >= 8 for c in captions)
    # the page ends with what to run next, and the result carries the measured steps
    assert "Next: your own photos" in html and "pixelnn prepare" in html
    assert set(r.steps) == {"prepare", "train", "library", "synthesize", "page"}
    assert r.seconds >= sum(r.steps.values()) - 1e-6 > 0 and r.train_steps > 0
    assert np.isfinite(r.stage1_psnr) and np.isfinite(r.bicubic_psnr)
    # the data: views of bundled faces and objects, labelled by kind and photo
    records = Dataset(tmp_path / "demo" / "data").split("train").records
    assert {"people", "objects"} <= {rec["labels"]["level1"] for rec in records}
