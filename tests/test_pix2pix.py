"""The pix2pix baseline: shapes, checkpoints, seeded dropout sampling, training, resuming, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pixelnn.baselines.pix2pix import (Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, Pix2PixConfig,
                                       Pix2PixSampler, _lr_factor, auto_depth, load_model, mean_pairwise_l1,
                                       save_model, train_pix2pix)
from pixelnn.cli import main
from pixelnn.errors import PixelNNError

TINY = dict(ngf=8, ndf=8, batch_size=4, val_every=1000, sample_every=1000, num_threads=1)


@pytest.mark.parametrize("in_channels,input_size", [(3, 4), (1, 32)])
def test_generator_and_discriminator_shapes(in_channels, input_size):
    g = Generator(GeneratorConfig(in_channels=in_channels, input_size=input_size, size=32, ngf=8, depth=4))
    out = g(torch.zeros(2, in_channels, input_size, input_size), dropout_on=False)
    assert out.shape == (2, 3, 32, 32)
    assert out.abs().max() <= 1  # tanh
    d = Discriminator(DiscriminatorConfig(in_channels=in_channels, ndf=8))
    assert d(torch.zeros(2, in_channels, 32, 32), out).shape == (2, 1, 2, 2)
    # On 96 px images the 70x70 PatchGAN gives 10x10 patch logits.
    assert d(torch.zeros(1, in_channels, 96, 96), torch.zeros(1, 3, 96, 96)).shape == (1, 1, 10, 10)


def test_patchgan_receptive_field():
    assert DiscriminatorConfig(num_layers=3).receptive_field == 70
    assert DiscriminatorConfig(num_layers=2).receptive_field == 34
    # Empirically: one logit depends on at most a 34x34 window of the input (with a local norm:
    # instance norm mixes in statistics of the whole image).
    d = Discriminator(DiscriminatorConfig(in_channels=1, ndf=4, num_layers=2, norm="batch")).eval()
    x, y = torch.randn(1, 1, 64, 64, requires_grad=True), torch.randn(1, 3, 64, 64)
    logits = d(x, y)
    logits[0, 0, logits.shape[2] // 2, logits.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    assert 20 < rows.max() - rows.min() + 1 <= 34 and 20 < cols.max() - cols.min() + 1 <= 34


def test_auto_depth_and_bad_depth():
    assert auto_depth(96) == 5  # 96 -> 3x3 bottleneck
    assert auto_depth(32) == 4  # 32 -> 2x2
    with pytest.raises(PixelNNError, match="divisible"):
        GeneratorConfig(size=96, depth=6)


def test_lr_schedule_and_pairwise_l1_known_answers():
    assert _lr_factor(0.0) == 1.0 and _lr_factor(0.49) == 1.0
    assert _lr_factor(0.75) == pytest.approx(0.5) and _lr_factor(1.0) == 0.0
    black, white = np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 255, np.uint8)
    assert mean_pairwise_l1(np.concatenate([black, white])) == pytest.approx(1.0)
    assert mean_pairwise_l1(np.concatenate([black, black, white])) == pytest.approx(2 / 3)
    assert mean_pairwise_l1(black) == 0.0


def test_seeded_dropout_is_private_and_reproducible():
    g = Generator(GeneratorConfig(in_channels=3, input_size=4, size=32, ngf=8, depth=4)).eval()
    x = torch.rand(3, 3, 4, 4).mul(2).sub(1)
    state = torch.random.get_rng_state()
    a = g(x, generator=torch.Generator().manual_seed(5))
    b = g(x, generator=torch.Generator().manual_seed(5))
    c = g(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # Without dropout the network is deterministic and eval-mode instance norm is per sample.
    assert torch.equal(g(x, dropout_on=False), g(x, dropout_on=False))
    assert torch.allclose(g(x[:1], dropout_on=False), g(x, dropout_on=False)[:1], atol=1e-6)


def test_checkpoint_rebuilds_from_file_alone(tmp_path):
    g = Generator(GeneratorConfig(in_channels=1, input_size=32, size=32, ngf=8, depth=3, num_dropout=2))
    d = Discriminator(DiscriminatorConfig(in_channels=1, ndf=8, num_layers=2))
    save_model(g, tmp_path / "g.safetensors", "generator")
    save_model(d, tmp_path / "d.safetensors", "discriminator")
    g2, d2 = load_model(tmp_path / "g.safetensors", "generator"), load_model(tmp_path / "d.safetensors", "discriminator")
    assert g2.config == g.config and d2.config == d.config
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.equal(g.eval()(x, generator=torch.Generator().manual_seed(1)),
                       g2(x, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(d.eval()(x, y), d2(x, y))
    with pytest.raises(PixelNNError, match="not a pix2pix generator"):
        load_model(tmp_path / "d.safetensors", "generator")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(PixelNNError, match="cannot read"):
        load_model(tmp_path / "bad.safetensors", "generator")


def test_training_writes_everything_and_learns(tiny_superres_dataset, tmp_path):
    out = tmp_path / "p2p"
    cfg = Pix2PixConfig(**{**TINY, "val_every": 10, "sample_every": 20, "max_steps": 40, "seed": 1})
    result = train_pix2pix(tiny_superres_dataset, out, cfg, progress=False)
    for name in ("generator.safetensors", "discriminator.safetensors", "train_state.safetensors", "config.json",
                 "train_log.jsonl", "metrics.json", "samples/latest.png", "samples/step_0000020.png"):
        assert (out / name).is_file(), name
    assert result.steps == 40
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [10, 20, 30, 40, 40]
    assert log[-1]["val_l1"] < log[0]["val_l1"]  # the L1 term (lambda 100) pulls G towards the photos
    assert set(result.metrics) >= {"psnr", "ssim", "l1", "pairwise_l1", "images_per_second", "steps"}
    assert result.metrics["pairwise_l1"] > 0  # dropout on: samples differ
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "pixelnn-pix2pix" and config["generator"]["input_size"] == 4


def test_sampler_contract(tiny_superres_dataset, tmp_path):
    train_pix2pix(tiny_superres_dataset, tmp_path / "p2p", Pix2PixConfig(**{**TINY, "max_steps": 5}), progress=False)
    sampler = Pix2PixSampler.from_dir(tmp_path / "p2p")
    x = np.load(tiny_superres_dataset / "test" / "inputs.npy")[:2]  # (2, 4, 4, 3)
    out = sampler.sample(x[0], num_outputs=6, seed=3)
    assert out.shape == (6, 32, 32, 3) and out.dtype == np.uint8
    assert len({o.tobytes() for o in out}) == 6  # each draw has its own dropout masks
    assert np.array_equal(out, sampler.sample(x[0], num_outputs=6, seed=3))
    assert not np.array_equal(out, sampler.sample(x[0], num_outputs=6, seed=4))
    batch = sampler.sample_batch(x, num_outputs=6, seed=3)
    assert batch.shape == (2, 6, 32, 32, 3)
    assert np.array_equal(batch[0], out)
    with pytest.raises(PixelNNError, match="must be uint8"):
        sampler.sample(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(PixelNNError, match="must be uint8"):
        sampler.sample(x[0].astype(np.float32))


def test_not_a_model_dir(tmp_path):
    with pytest.raises(PixelNNError, match="not a pix2pix model directory"):
        Pix2PixSampler.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "pixelnn-model"}))
    with pytest.raises(PixelNNError, match="not a pix2pix model directory"):
        Pix2PixSampler.from_dir(tmp_path)
    with pytest.raises(PixelNNError, match="not a PixelNN dataset"):
        train_pix2pix(tmp_path, tmp_path / "m", progress=False)


def test_interrupted_then_resumed_run_equals_uninterrupted_run(tiny_superres_dataset, tmp_path):
    cfg = Pix2PixConfig(**{**TINY, "max_steps": 10})
    train_pix2pix(tiny_superres_dataset, tmp_path / "full", cfg, progress=False)
    stopped = train_pix2pix(tiny_superres_dataset, tmp_path / "resumed", cfg, progress=False,
                            should_stop=lambda step: step >= 6)
    assert stopped.steps == 6
    resumed = train_pix2pix(tiny_superres_dataset, tmp_path / "resumed", cfg, progress=False)
    assert resumed.steps == 10
    # Same batches, dropout masks, optimizer moments and schedule: the same weights.
    for kind in ("generator", "discriminator"):
        a = load_model(tmp_path / "full" / f"{kind}.safetensors", kind)
        b = load_model(tmp_path / "resumed" / f"{kind}.safetensors", kind)
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-5), f"{kind}.{name}"


def test_cli_baseline_train(tiny_superres_dataset, tmp_path, capsys):
    out = tmp_path / "p2p"
    assert main(["-q", "baseline-train", str(tiny_superres_dataset), "--out", str(out), "--steps", "3",
                 "--batch-size", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "pix2pix: trained 3 steps" in printed and "PSNR" in printed
    assert Pix2PixSampler.from_dir(out).config.ngf == 32
    assert main(["-q", "baseline-train", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "not a PixelNN dataset" in capsys.readouterr().err


def test_training_records_its_device(tiny_superres_dataset, tmp_path):
    result = train_pix2pix(tiny_superres_dataset, tmp_path / "p2p", Pix2PixConfig(**{**TINY, "max_steps": 2},
                                                                                  device="cpu"),
                           progress=False, final_eval_limit=2)
    assert result.metrics["device"] == "cpu"
    config = json.loads((tmp_path / "p2p" / "config.json").read_text())
    assert config["device"] == "cpu" and config["train"]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_training_smoke(tiny_superres_dataset, tmp_path):
    """On a GPU: training (dropout masks from a CUDA generator), resuming, sampling; checkpoints load on the CPU."""
    cfg = Pix2PixConfig(**{**TINY, "max_steps": 4, "val_every": 2, "sample_every": 2}, device="cuda")
    result = train_pix2pix(tiny_superres_dataset, tmp_path / "p2p", cfg, progress=False)
    assert result.steps == 4 and result.metrics["device"] == "cuda:0" and np.isfinite(result.metrics["psnr"])
    cfg = Pix2PixConfig(**{**TINY, "max_steps": 6}, device="cuda")
    assert train_pix2pix(tiny_superres_dataset, tmp_path / "p2p", cfg, progress=False).steps == 6
    sampler = Pix2PixSampler.from_dir(tmp_path / "p2p")  # on the CPU
    x = np.load(tiny_superres_dataset / "test" / "inputs.npy")[:1]
    assert sampler.sample(x[0], num_outputs=3).shape == (3, 32, 32, 3)
    sampler.generator.cuda()
    assert sampler.sample(x[0], num_outputs=3).shape == (3, 32, 32, 3)
