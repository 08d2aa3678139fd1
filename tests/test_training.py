"""Stage-1 regressor and training: shapes, checkpoints carrying their config, resuming, budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pixelnn.config import RegressorConfig, TrainConfig
from pixelnn.errors import PixelNNError
from pixelnn.models.regressor import Regressor, predict, to_tensor, to_uint8
from pixelnn.training import load_model_dir, train


@pytest.mark.parametrize("in_channels,input_size", [(3, 12), (1, 96), (3, 96)])
def test_regressor_shapes(in_channels, input_size):
    model = Regressor(RegressorConfig(in_channels=in_channels, input_size=input_size, size=96))
    out = model(torch.zeros(2, in_channels, input_size, input_size))
    assert out.shape == (2, 3, 96, 96)


def test_untrained_superres_regressor_is_bicubic():
    """The head starts at zero, so f(x) starts as the bicubic upsampling of x."""
    model = Regressor(RegressorConfig(in_channels=3, input_size=12, size=96)).eval()
    x = torch.rand(1, 3, 12, 12) * 2 - 1
    expected = torch.nn.functional.interpolate(x, size=(96, 96), mode="bicubic", align_corners=False)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_uint8_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(to_tensor(img)), img)


def test_checkpoint_rebuilds_from_file_alone(tmp_path):
    cfg = RegressorConfig(in_channels=1, input_size=32, size=32, base_channels=8, depth=2, norm="group")
    model = Regressor(cfg)
    torch.nn.init.normal_(model.head.weight)
    model.save(tmp_path / "m.safetensors")
    loaded = Regressor.load(tmp_path / "m.safetensors")
    assert loaded.config == cfg
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(model.eval()(x), loaded(x))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "regressor.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(PixelNNError, match="cannot read"):
        Regressor.load(bad)


def test_training_reduces_loss_and_writes_everything(tiny_superres_dataset, tmp_path):
    out = tmp_path / "model"
    cfg = TrainConfig(batch_size=8, lr=3e-3, max_steps=60, val_every=30, sample_every=30, seed=1)
    overrides = {"base_channels": 8, "depth": 2}
    result = train(tiny_superres_dataset, out, cfg, model_overrides=overrides, progress=False)
    for name in ("regressor.safetensors", "train_state.safetensors", "config.json", "train_log.jsonl",
                 "metrics.json", "samples/latest.png", "samples/step_0000030.png"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["val_mse"] < log[0]["val_mse"] * 1.01 or result.metrics["psnr"] > 15
    assert result.steps == 60
    assert set(result.metrics) >= {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images_per_second"}
    model, config = load_model_dir(out)
    assert config["task"]["name"] == "superres"
    assert predict(model, np.zeros((2, 4, 4, 3), np.uint8)).shape == (2, 32, 32, 3)


def test_training_learns_beyond_bicubic(tiny_superres_dataset, tmp_path):
    """On blob images a briefly trained regressor must beat bicubic on val PSNR."""
    cfg = TrainConfig(batch_size=16, lr=3e-3, max_steps=150, val_every=1000, sample_every=1000, seed=0)
    result = train(tiny_superres_dataset, tmp_path / "m", cfg, model_overrides={"base_channels": 8, "depth": 2},
                   progress=False)
    assert result.metrics["psnr"] > result.metrics["bicubic_psnr"]


def test_interrupted_then_resumed_run_equals_uninterrupted_run(tiny_superres_dataset, tmp_path):
    overrides = {"base_channels": 8, "depth": 2, "norm": "none"}
    cfg = TrainConfig(batch_size=4, max_steps=20, val_every=100, sample_every=100)
    train(tiny_superres_dataset, tmp_path / "full", cfg, model_overrides=overrides, progress=False)
    stopped = train(tiny_superres_dataset, tmp_path / "resumed", cfg, model_overrides=overrides, progress=False,
                    should_stop=lambda step: step >= 10)
    assert stopped.steps == 10
    resumed = train(tiny_superres_dataset, tmp_path / "resumed", cfg, progress=False)
    assert resumed.steps == 20
    a = Regressor.load(tmp_path / "full" / "regressor.safetensors")
    b = Regressor.load(tmp_path / "resumed" / "regressor.safetensors")
    assert a.config == b.config
    # Same batches (RNG state restored), same optimizer moments and schedule: the same weights.
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5), name


def test_minutes_budget_stops_training(tiny_superres_dataset, tmp_path):
    cfg = TrainConfig(batch_size=4, max_steps=10**9, minutes=0.05, val_every=10**6, sample_every=10**6)
    result = train(tiny_superres_dataset, tmp_path / "m", cfg, model_overrides={"base_channels": 8, "depth": 2},
                   progress=False)
    assert 0 < result.steps < 10**9
    assert result.seconds >= 3.0


def test_not_a_dataset(tmp_path):
    with pytest.raises(PixelNNError, match="not a PixelNN dataset"):
        train(tmp_path, tmp_path / "m", progress=False)


def test_cpu_clock_budget_counts_process_time(tiny_superres_dataset, tmp_path, monkeypatch):
    import time as _time

    cpu = {"t": 0.0}

    def fake_process_time() -> float:  # CPU time advances 1 s per call: the budget ends after a few steps
        cpu["t"] += 1.0
        return cpu["t"]

    monkeypatch.setattr(_time, "process_time", fake_process_time)
    cfg = TrainConfig(batch_size=4, max_steps=1000, minutes=5 / 60, clock="cpu", val_every=1000, sample_every=1000)
    result = train(tiny_superres_dataset, tmp_path / "m", cfg, progress=False, final_eval_limit=4)
    assert 1 <= result.steps <= 5  # wall time would have allowed hundreds of steps
    with pytest.raises(PixelNNError, match="valid: wall, cpu"):
        TrainConfig(clock="gpu")
