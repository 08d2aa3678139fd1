"""Stage-1 training speed levers (issue 16 part 5): channels-last, bf16 autocast, torch.compile and the
learning-rate schedule; defaults that leave training bit-identical, refused bad values, configs that
round-trip (and old ones that keep their old meaning), schedule values against their formulas."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from pixelnn.cli import main
from pixelnn.config import TRAIN_LEGACY, TrainConfig
from pixelnn.errors import PixelNNError
from pixelnn.io import tensors_sha256
from pixelnn.models.regressor import Regressor
from pixelnn.training import lr_factor, train

from .conftest import make_dataset

TINY = {"base_channels": 8, "depth": 2}
LEVERS_OFF = {"channels_last": False, "autocast": "off", "compile": False, "lr_schedule": "cosine"}
#: The weights after 6 default steps (:func:`_six_steps`), measured with the code before the levers existed
#: (commit f78474d), torch 2.13.0+cpu on an AVX512 CPU, one thread.
DIGEST_BEFORE_LEVERS = "cf38a415f4fe64427fde6e4b40c42718c9f3fb0b0126492c631e84b695bea398"


@pytest.fixture
def data(tmp_path):
    torch.set_num_threads(1)
    return make_dataset(tmp_path / "data", n=24, seed=0)


def _six_steps(data, out, **levers) -> Regressor:
    cfg = TrainConfig(batch_size=4, max_steps=6, val_every=10**9, sample_every=0, num_threads=1, **levers)
    train(data, out, cfg, progress=False, final_eval_limit=4)
    return Regressor.load(out / "regressor.safetensors")


def _digest(model: Regressor) -> str:
    return tensors_sha256({k: v.contiguous() for k, v in model.state_dict().items()})


def test_levers_off_and_old_configs_train_bit_identically_to_before(data, tmp_path):
    old = TrainConfig().to_dict()
    for k in TRAIN_LEGACY:
        del old[k]  # a config.json written before the levers existed
    legacy = TrainConfig.from_dict(old)
    from_old = _six_steps(data, tmp_path / "old", **{k: getattr(legacy, k) for k in LEVERS_OFF})
    off = _six_steps(data, tmp_path / "off", **LEVERS_OFF)
    for (name, a), b in zip(from_old.state_dict().items(), off.state_dict().values()):
        assert torch.equal(a, b), name
    if torch.__version__ != "2.13.0+cpu" or torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("the stored digest was measured with torch 2.13.0+cpu on an AVX512 CPU")
    assert _digest(off) == DIGEST_BEFORE_LEVERS


@pytest.mark.parametrize("native", [True, False])
def test_default_autocast_is_bf16_exactly_where_the_device_has_native_bf16(data, tmp_path, monkeypatch, native):
    import pixelnn.devices as devices

    assert TrainConfig().autocast == "auto"
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    default = _six_steps(data, tmp_path / "default")
    same = _six_steps(data, tmp_path / "explicit", autocast="bf16" if native else "off")
    other = _six_steps(data, tmp_path / "other", autocast="off" if native else "bf16")
    assert _digest(default) == _digest(same) != _digest(other)
    written = json.loads((tmp_path / "default" / "config.json").read_text())
    assert written["train"]["autocast"] == "auto" and written["autocast"] == ("bf16" if native else "off")


def test_native_bf16_answers_for_each_device_kind():
    from pixelnn.devices import native_bf16

    assert isinstance(native_bf16(torch.device("cpu")), bool)
    assert native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize("levers", [{"channels_last": True}, {"autocast": "bf16"},
                                    {"channels_last": True, "autocast": "bf16"},
                                    {"lr_schedule": "constant"}, {"lr_schedule": "onecycle"}])
def test_each_lever_trains_to_a_finite_loss_and_is_recorded(data, tmp_path, levers):
    cfg = TrainConfig(batch_size=4, max_steps=6, val_every=3, sample_every=0, num_threads=1, **levers)
    result = train(data, tmp_path / "m", cfg, model_overrides=TINY, progress=False, final_eval_limit=4)
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert log and all(math.isfinite(e["train_mse"]) and math.isfinite(e["val_mse"]) for e in log)
    assert math.isfinite(result.metrics["psnr"]) and result.steps == 6
    recorded = json.loads((tmp_path / "m" / "config.json").read_text())["train"]
    assert {k: recorded[k] for k in levers} == levers
    assert TrainConfig.from_dict(recorded) == cfg
    # The saved weights are plain (contiguous) tensors whatever the memory format trained in.
    assert torch.isfinite(Regressor.load(tmp_path / "m" / "regressor.safetensors").head.weight).all()


def test_compile_trains_to_a_finite_loss(data, tmp_path, caplog):
    cfg = TrainConfig(batch_size=4, max_steps=3, val_every=10**9, sample_every=0, num_threads=1, compile=True)
    with caplog.at_level(logging.WARNING, logger="pixelnn.training"):
        result = train(data, tmp_path / "m", cfg, model_overrides=TINY, progress=False, final_eval_limit=4)
    assert math.isfinite(result.metrics["psnr"]) and result.steps == 3
    # Compiled here, or (where compiling fails) one warning and uncompiled training.
    assert result.metrics["compiled"] or "training uncompiled" in caplog.text
    assert json.loads((tmp_path / "m" / "config.json").read_text())["train"]["compile"] is True


def test_a_failing_compile_warns_once_and_trains_exactly_as_uncompiled(data, tmp_path, monkeypatch, caplog):
    def broken_compile(model, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="pixelnn.training"):
        compiled = _six_steps(data, tmp_path / "c", compile=True)
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["compiled"] is False
    assert _digest(compiled) == _digest(_six_steps(data, tmp_path / "eager"))


def test_torch_compile_unavailable_warns_and_trains(data, tmp_path, monkeypatch, caplog):
    def no_compile(*a, **k):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", no_compile)
    with caplog.at_level(logging.WARNING, logger="pixelnn.training"):
        _six_steps(data, tmp_path / "c", compile=True)
    assert "training uncompiled" in caplog.text


@pytest.mark.parametrize("field,value,message", [
    ("channels_last", "yes", "channels_last must be true or false, got 'yes'"),
    ("channels_last", 1, "channels_last must be true or false, got 1"),
    ("compile", "false", "compile must be true or false, got 'false'"),
    ("autocast", "fp16", "invalid autocast 'fp16'; valid: auto, off, bf16"),
    ("autocast", None, "invalid autocast None; valid: auto, off, bf16"),
    ("lr_schedule", "linear", "invalid lr schedule 'linear'; valid: cosine, constant, onecycle"),
])
def test_bad_lever_values_are_one_line_errors(field, value, message):
    with pytest.raises(PixelNNError) as e:
        TrainConfig(**{field: value})
    assert str(e.value) == message
    with pytest.raises(PixelNNError, match="invalid lr schedule"):
        lr_factor("step", 0.5)


def test_cli_refuses_bad_lever_values_in_one_line(data, tmp_path, capsys):
    for flag, value in (("--autocast", "fp16"), ("--lr-schedule", "step")):
        with pytest.raises(SystemExit) as e:
            main(["-q", "train", str(data), "--out", str(tmp_path / "m"), flag, value])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and value in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_cli_flags_reach_the_recorded_config(data, tmp_path):
    out = tmp_path / "m"
    assert main(["-q", "train", str(data), "--out", str(out), "--steps", "2", "--batch-size", "4", "--threads", "1",
                 "--base-channels", "8", "--depth", "2", "--channels-last", "--autocast", "bf16",
                 "--lr-schedule", "onecycle", "--no-compile"]) == 0
    recorded = json.loads((out / "config.json").read_text())["train"]
    assert (recorded["channels_last"], recorded["autocast"], recorded["compile"], recorded["lr_schedule"]) == \
        (True, "bf16", False, "onecycle")
    out2 = tmp_path / "m2"
    assert main(["-q", "train", str(data), "--out", str(out2), "--steps", "1", "--batch-size", "4",
                 "--base-channels", "8", "--depth", "2"]) == 0
    defaults = TrainConfig()
    recorded = json.loads((out2 / "config.json").read_text())["train"]
    assert all(recorded[k] == getattr(defaults, k) for k in LEVERS_OFF)


def test_config_round_trips_and_old_configs_keep_their_old_meaning():
    cfg = TrainConfig(channels_last=True, autocast="bf16", compile=True, lr_schedule="onecycle", batch_size=16)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = TrainConfig().to_dict()
    for k in TRAIN_LEGACY:
        del old[k]  # a config.json written before the levers existed
    legacy = TrainConfig.from_dict(old)
    assert {k: getattr(legacy, k) for k in TRAIN_LEGACY} == LEVERS_OFF


def _naive_cosine(p: float) -> float:  # the original schedule: linear warm-up over 2%, cosine down to 5%
    if p < 0.02:
        return max(p / 0.02, 0.05)
    return 0.05 + 0.95 * (1 + math.cos(math.pi * min((p - 0.02) / 0.98, 1.0))) / 2


def _naive_onecycle(p: float) -> float:  # torch's OneCycleLR (cos) over a budget: 30% up from 1/25, down to 1/25e4
    lo, end = 1 / 25, 1 / 25 / 1e4
    if p < 0.3:
        return lo + (1 - lo) * (1 - math.cos(math.pi * p / 0.3)) / 2
    return end + (1 - end) * (1 + math.cos(math.pi * (p - 0.3) / 0.7)) / 2


@pytest.mark.parametrize("p", [0.0, 0.01, 0.02, 0.15, 0.3, 0.5, 0.65, 0.9, 1.0])
def test_schedules_at_known_budget_fractions(p):
    assert lr_factor("constant", p) == 1.0
    assert lr_factor("cosine", p) == pytest.approx(_naive_cosine(p), abs=1e-12)
    assert lr_factor("onecycle", p) == pytest.approx(_naive_onecycle(p), abs=1e-12)


def test_schedule_landmarks():
    assert lr_factor("cosine", 0.0) == 0.05 and lr_factor("cosine", 0.02) == 1.0
    assert lr_factor("cosine", 1.0) == pytest.approx(0.05)
    assert lr_factor("onecycle", 0.0) == pytest.approx(0.04)
    assert lr_factor("onecycle", 0.3) == pytest.approx(1.0)
    assert lr_factor("onecycle", 1.0) == pytest.approx(4e-6)
    # Past the budget (a resumed run with a larger budget can briefly report > 1) the rate stays at the end.
    assert lr_factor("onecycle", 1.2) == lr_factor("onecycle", 1.0)


def test_onecycle_matches_torch_one_cycle_lr():
    steps = 200
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=steps + 1, cycle_momentum=False,
                                                three_phase=False)
    for step in range(steps + 1):
        # torch's phases end at step pct_start * total - 1 and total - 1: progress step / steps, up to rounding
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_factor("onecycle", step / steps), abs=0.02)
        opt.step()
        if step < steps:
            sched.step()


def test_schedule_follows_the_fraction_of_a_cpu_clock_budget(data, tmp_path, monkeypatch):
    import time as _time

    import pixelnn.training as training

    cpu = {"t": 0.0}

    def fake_process_time() -> float:  # CPU time advances 1 s per call
        cpu["t"] += 1.0
        return cpu["t"]

    seen: list[float] = []
    real = training.lr_factor
    monkeypatch.setattr(training, "lr_factor", lambda schedule, p: seen.append(p) or real(schedule, p))
    monkeypatch.setattr(_time, "process_time", fake_process_time)
    cfg = TrainConfig(batch_size=4, max_steps=10**6, minutes=20 / 60, clock="cpu", val_every=10**9, sample_every=0,
                      lr_schedule="onecycle")
    train(data, tmp_path / "m", cfg, model_overrides=TINY, progress=False, final_eval_limit=4)
    # The step count alone (10**6 steps) would leave the schedule at ~0; the CPU budget's fraction moves it.
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] > 0.5
    assert all(0 <= p <= 1 for p in seen)


@pytest.mark.parametrize("native", [True, False])
def test_explicit_bf16_warns_only_where_it_is_emulated(monkeypatch, caplog, native):
    from pixelnn import devices

    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    monkeypatch.setattr(devices, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="pixelnn.devices"):
        assert devices.resolve_autocast("bf16", torch.device("cpu")) == "bf16"
        assert devices.resolve_autocast("bf16", torch.device("cpu")) == "bf16"  # warned once per process
        assert devices.resolve_autocast("off", torch.device("cpu")) == "off"
    warned = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
