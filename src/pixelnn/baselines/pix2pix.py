"""pix2pix (Isola et al. 2017) as a baseline: a U-Net generator with dropout, a PatchGAN
discriminator, and the L1 + conditional GAN loss, trained on a prepared PixelNN dataset.

The paper (Fig. 2) samples pix2pix many times per input with dropout on, and shows that the
outputs barely differ: the generator learns to ignore its noise. :class:`Pix2PixSampler` does the
same (72 samples per input by default), so the evaluator can apply the same metrics to pix2pix
and to PixelNN.

Architecture (``ngf``/``ndf`` channels, images in [-1, 1])::

    x (B, C, s, s) --upsample to S (bicubic for images, bilinear for maps; as stage 1)--> (B, C, S, S)
    encoder: 4x4 stride-2 convs, LeakyReLU(0.2), norm        S -> S/2 -> ... -> S/2^depth
    decoder: ReLU, 4x4 stride-2 transposed convs, norm, skip concatenation; dropout 0.5 in the
             first ``num_dropout`` decoder blocks; tanh at the output     -> G(x): (B, 3, S, S)
    PatchGAN D(x, y): concat (B, C + 3, S, S); ``disc_layers`` stride-2 4x4 convs, one stride-1
             conv, a 1-channel stride-1 conv -> (B, 1, P, P) real/fake logits per patch
             (3 stride-2 layers = the 70x70 PatchGAN; on 96 px images P = 10).

pix2pix at 256 px has 8 halvings down to a 1x1 bottleneck and drops out in the 3 decoder blocks
above it. At 96 px the encoder stops at 3x3 (``depth`` 5), and dropout is in the first 3
decoder blocks (outputs at 6, 12 and 24 px).

Normalisation: instance norm (no affine, no running statistics) in G and D. Isola et al. use
batch norm with the test batch's own statistics and batch size 1, which *is* instance norm; it
also makes each of the 72 samples of one forward pass independent of the others and of the batch
size, and behaves the same in training and at test time (batch norm in eval mode would switch to
running statistics that dropout and the GAN loss shift during training). ``norm="batch"`` is
available for experiments (eval mode at sampling: running statistics).

Dropout is explicit: masks are drawn from a ``torch.Generator`` passed to ``forward``, so sampling
is deterministic given a seed and never touches the global RNG, whatever the module's train/eval
mode (dropout is on whenever ``dropout=True``).

Loss (Isola eq. 4): G minimises ``gan(D(x, G(x)), real) + lambda_l1 * |y - G(x)|_1`` with
``lambda_l1`` = 100; D minimises ``(gan(D(x, y), real) + gan(D(x, G(x)), fake)) / 2``;
``gan`` is binary cross-entropy on logits (``gan_loss="bce"``, as Isola) or least squares
(``"lsgan"``). Adam, lr 2e-4, betas (0.5, 0.999); the rate is constant for the first half of the
budget (steps or minutes) and decays linearly to 0 over the second half.

``train_pix2pix(DATA_DIR, OUT_DIR)`` writes into OUT_DIR:

- ``generator.safetensors`` / ``discriminator.safetensors``: weights, config in the metadata;
- ``config.json``: task, both architectures, training settings, dataset;
- ``train_state.safetensors``: the checkpoint to resume from, one file: both networks' weights again, both
  optimizers, step, time, data and dropout RNG states (a kill never leaves them at different steps);
- ``train_log.jsonl``: one line per validation (smoothed train losses, val L1/PSNR of one dropout
  sample per image on the first 256 val images; L1s in [0, 1] units);
- ``samples/step_XXXXXXX.png`` and ``samples/latest.png``: rows input | 3 samples | photo;
- ``metrics.json``: final val PSNR/SSIM/L1 of one sample per image and the spread of the samples.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file

from pixelnn.config import MAX_LR, TaskConfig, check_number, check_train_budget
from pixelnn.data.dataset import SplitData, image_grid
from pixelnn.errors import PixelNNError
from pixelnn.evaluation.image_metrics import psnr, ssim
from pixelnn.io import (append_jsonl, atomic_path, check_tensors_sha256, config_from, crash_point, load_state_checked,
                        parse_json, read_folder_config, recover_all, save_image, tensors_sha256, write_json)
from pixelnn.models.regressor import module_device, to_tensor, to_uint8, upsample_input
from pixelnn.train_loop import (LoopResult, TrainResult, check_finite_loss, check_weight_steps, dataset_record,
                                draw_batch, load_optimizer_tensors, load_train_state, optimizer_tensors, run_budgeted,
                                save_train_state, start_training, take_weights, with_weights)

log = logging.getLogger(__name__)

FORMAT = "pixelnn-pix2pix"
VERSION = 1
NORMS = ("instance", "batch")
GAN_LOSSES = ("bce", "lsgan")


@dataclass(frozen=True)
class Pix2PixFiles:
    """File names inside a pix2pix OUT_DIR."""

    generator: str = "generator.safetensors"
    discriminator: str = "discriminator.safetensors"
    config: str = "config.json"
    state: str = "train_state.safetensors"
    log: str = "train_log.jsonl"
    samples: str = "samples"
    metrics: str = "metrics.json"


FILES = Pix2PixFiles()


# ----------------------------------------------------------------------------- configs
@dataclass
class GeneratorConfig:
    """U-Net generator: input ``in_channels`` x ``input_size``^2, output ``out_channels`` x ``size``^2."""

    in_channels: int = 3
    out_channels: int = 3
    size: int = 96
    input_size: int = 12
    ngf: int = 32  # channels after the first encoder conv; doubled per level, capped at 8 * ngf
    depth: int = 5  # stride-2 convs in the encoder (96 -> 3)
    dropout: float = 0.5
    num_dropout: int = 3  # decoder blocks (from the bottleneck up) with dropout
    norm: str = "instance"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise PixelNNError(f"invalid norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.depth < 1 or self.size % 2**self.depth:
            raise PixelNNError(f"generator depth {self.depth} needs the size ({self.size}) divisible by 2^{self.depth}")
        if not 0 <= self.dropout < 1:
            raise PixelNNError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DiscriminatorConfig:
    """PatchGAN discriminator on (input x upsampled, photo y) pairs."""

    in_channels: int = 3  # channels of x; D sees in_channels + out_channels
    out_channels: int = 3
    ndf: int = 32
    num_layers: int = 3  # stride-2 convs; 3 is the 70x70 PatchGAN
    norm: str = "instance"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise PixelNNError(f"invalid norm {self.norm!r}; valid: {', '.join(NORMS)}")

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input patch seen by one output logit (70 for 3 layers)."""
        rf = 1
        for _ in range(2):  # the two stride-1 4x4 convs at the top
            rf += 3
        for _ in range(self.num_layers):
            rf = 2 * rf + 2  # 4x4 stride 2
        return rf


@dataclass
class Pix2PixConfig:
    """Training settings for :func:`train_pix2pix` (and the architecture knobs that are not data-derived)."""

    batch_size: int = 4  # Isola et al. used 1 to 10 (4 for edges2shoes)
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_l1: float = 100.0
    gan_loss: str = "bce"
    max_steps: int = 100_000
    minutes: float | None = None
    clock: str = "wall"  # what `minutes` counts: "wall" time, or "cpu" time of this process (all threads)
    val_every: int = 200
    sample_every: int = 500
    seed: int = 0
    num_threads: int | None = None
    augment_flip: bool = True
    ngf: int = 32
    ndf: int = 32
    depth: int | None = None  # None: as many halvings as the size allows, down to a 2x2..3x3 bottleneck
    disc_layers: int = 3
    norm: str = "instance"
    dropout: float = 0.5
    num_dropout: int = 3
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps" (pixelnn.devices), checked when training starts

    def __post_init__(self) -> None:
        if self.gan_loss not in GAN_LOSSES:
            raise PixelNNError(f"invalid gan loss {self.gan_loss!r}; valid: {', '.join(GAN_LOSSES)}")
        check_train_budget(self)
        self.lr = check_number("learning rate", self.lr, 0, MAX_LR, above=True)
        self.lambda_l1 = check_number("lambda l1", self.lambda_l1, 0)
        self.dropout = check_number("dropout", self.dropout, 0, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def auto_depth(size: int, max_depth: int = 8) -> int:
    """Most stride-2 halvings of ``size`` that stay exact and leave a bottleneck of at least 2 px (96 -> 5)."""
    depth = 0
    while depth < max_depth and size % 2 ** (depth + 1) == 0 and size // 2 ** (depth + 1) >= 2:
        depth += 1
    if depth == 0:
        raise PixelNNError(f"image size {size} cannot be halved for a U-Net generator")
    return depth


# ----------------------------------------------------------------------------- models
def make_norm(kind: str, channels: int) -> nn.Module:
    """Instance norm (no affine, no running stats; pix2pix's batch-size-1 batch norm) or batch norm."""
    return nn.InstanceNorm2d(channels) if kind == "instance" else nn.BatchNorm2d(channels)


def dropout(h: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout whose mask comes from ``generator`` (the global RNG when None)."""
    if p == 0:
        return h
    keep = torch.rand(h.shape, generator=generator, device=h.device, dtype=h.dtype) >= p
    return h * keep / (1 - p)


class Generator(nn.Module):
    """pix2pix U-Net: x (B, C_in, s, s) in [-1, 1] -> G(x) (B, C_out, S, S) in (-1, 1).

    Parameters
    ----------
    config : GeneratorConfig
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        c, d, norm = config.ngf, config.depth, config.norm
        chans = [min(c * 2**i, c * 8) for i in range(d)]  # encoder outputs, e.g. 32, 64, 128, 256, 256
        self.down = nn.ModuleList()
        for i in range(d):
            c_in = config.in_channels if i == 0 else chans[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(c_in, chans[i], 4, stride=2, padding=1))
            if 0 < i < d - 1:  # no norm on the first layer nor on the bottleneck (pix2pix)
                layers.append(make_norm(norm, chans[i]))
            self.down.append(nn.Sequential(*layers))
        # Decoder block j takes the bottleneck (j = 0) or the previous block's output concatenated with
        # the encoder skip at that resolution; the last block maps to the image.
        self.up = nn.ModuleList()
        for j in range(d):
            i = d - 1 - j  # encoder level whose resolution this block starts from
            c_in = chans[i] if j == 0 else 2 * chans[i]
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_in, config.out_channels, 4, 2, 1), nn.Tanh()))
            else:
                self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_in, chans[i - 1], 4, 2, 1),
                                             make_norm(norm, chans[i - 1])))

    def forward(self, x: torch.Tensor, dropout_on: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, C_in, s, s) -> (B, C_out, S, S); dropout masks from ``generator`` when ``dropout_on``."""
        h = upsample_input(x, self.config.size)  # (B, C_in, S, S)
        skips = []
        for block in self.down:
            h = block(h)  # (B, ngf, S/2, S/2), (B, 2 ngf, S/4, S/4), ..., bottleneck (B, 8 ngf, S/2^d, S/2^d)
            skips.append(h)
        skips.pop()  # the bottleneck is not a skip
        for j, block in enumerate(self.up):
            h = block(h)  # doubles the resolution
            if j < len(self.up) - 1:
                if dropout_on and j < self.config.num_dropout:
                    h = dropout(h, self.config.dropout, generator)
                h = torch.cat([h, skips.pop()], dim=1)  # (B, 2 c_i, S/2^i, S/2^i)
        return h  # (B, C_out, S, S)


class Discriminator(nn.Module):
    """PatchGAN: (x upsampled (B, C_in, S, S), y (B, C_out, S, S)) -> logits (B, 1, P, P)."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        c, norm = config.ndf, config.norm
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels + config.out_channels, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        c_prev = c
        for n in range(1, config.num_layers + 1):
            c_next = c * min(2**n, 8)
            stride = 2 if n < config.num_layers else 1  # the last of these is the stride-1 layer
            layers += [nn.Conv2d(c_prev, c_next, 4, stride, 1), make_norm(norm, c_next), nn.LeakyReLU(0.2)]
            c_prev = c_next
        layers.append(nn.Conv2d(c_prev, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x_up: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_up, y], dim=1))  # (B, 1, P, P)


def save_model(model: nn.Module, path: str | Path, kind: str, extra_metadata: dict[str, str] | None = None) -> None:
    """Save a generator or discriminator to safetensors with its config in the metadata (atomic)."""
    meta = {"format": f"{FORMAT}-{kind}", "version": str(VERSION), "config": json.dumps(_to_dict(model.config))}
    meta.update(extra_metadata or {})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta["tensors_sha256"] = tensors_sha256(state)  # checked by load_model(): a damaged file is refused
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_model(path: str | Path, kind: str) -> nn.Module:
    """Rebuild a ``"generator"`` or ``"discriminator"`` from its checkpoint alone (eval mode)."""
    path = Path(path)
    cls, cfg_cls = (Generator, GeneratorConfig) if kind == "generator" else (Discriminator, DiscriminatorConfig)
    if not path.is_file():
        raise PixelNNError(f"no pix2pix {kind} checkpoint at {path}; train one with `pixelnn baseline-train`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != f"{FORMAT}-{kind}":
            raise ValueError(f"not a pix2pix {kind} (format {meta.get('format')!r})")
        if "config" not in meta:
            raise ValueError("its metadata has no config")
        state = load_file(str(path))
    except PixelNNError:
        raise
    except Exception as e:  # corrupt or foreign file
        raise PixelNNError(f"cannot read pix2pix {kind} checkpoint {path}: "
                           f"{str(e).splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    source = f"pix2pix {kind} checkpoint {path} (metadata 'config')"
    config = config_from(cfg_cls, parse_json(meta["config"], source, expect=dict), source)
    check_tensors_sha256(state, meta, path, f"pix2pix {kind} weights", "retrain the baseline")
    model = cls(config)
    load_state_checked(model, state, path, f"pix2pix {kind} weights")
    return model.eval()


# ----------------------------------------------------------------------------- sampling
class Pix2PixSampler:
    """Many pix2pix outputs per input, with dropout on (the paper's Fig. 2 protocol).

    Parameters
    ----------
    generator : Generator
        A trained generator (put in eval mode; dropout stays on through ``forward``).
    task : TaskConfig, optional
        The task it was trained on (for information).
    device : str or torch.device, optional
        Where the generator runs: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``; None (default) keeps it
        where it is (``from_dir`` loads it on the CPU). The dropout masks
        come from a generator on that device: the same seed gives the same outputs on one device, but
        not the same on the CPU and on a GPU.
    """

    def __init__(self, generator: Generator, task: TaskConfig | None = None, device: str | torch.device | None = None):
        from pixelnn.devices import resolve_device

        self.device = next(generator.parameters()).device if device is None else resolve_device(device)
        self.generator = generator.eval().to(self.device)
        self.task = task
        self.config = generator.config

    @classmethod
    def from_dir(cls, out_dir: str | Path, device: str | torch.device = "cpu") -> "Pix2PixSampler":
        """Load the generator trained by :func:`train_pix2pix` into OUT_DIR, on ``device``."""
        out_dir = Path(out_dir)
        cfg_path = out_dir / FILES.config
        config = read_folder_config(out_dir, FILES.config, "pix2pix model",
                                    f"train one with `pixelnn baseline-train DATA_DIR --out {out_dir}`")
        if config.get("format") != FORMAT:
            raise PixelNNError(f"{out_dir} is not a pix2pix model directory ({cfg_path} has format "
                               f"{config.get('format')!r})")
        task = config_from(TaskConfig, config["task"], cfg_path, "task") if "task" in config else None
        return cls(load_model(out_dir / FILES.generator, "generator"), task, device=device)

    def _check_inputs(self, inputs: np.ndarray) -> None:
        c = self.config
        expected = (c.input_size, c.input_size, c.in_channels)
        if inputs.dtype != np.uint8 or tuple(inputs.shape[1:]) != expected:
            raise PixelNNError(f"pix2pix inputs must be uint8 {expected} images (as in the dataset's inputs.npy), "
                               f"got {inputs.dtype} {tuple(inputs.shape[1:])}")

    @torch.inference_mode()
    def sample(self, input_image: np.ndarray, num_outputs: int = 72, seed: int = 0) -> np.ndarray:
        """``num_outputs`` dropout draws for one input, in one forward pass.

        Parameters
        ----------
        input_image : ndarray, (h, w, C) uint8
            One input as stored in the dataset's ``inputs.npy``.
        num_outputs : int
        seed : int
            Seeds the dropout masks (a private ``torch.Generator``): the same seed gives the same outputs.

        Returns
        -------
        ndarray, (num_outputs, H, W, 3) uint8
        """
        x = np.asarray(input_image)
        if x.ndim != 3:
            raise PixelNNError(f"sample() takes one (h, w, C) input, got shape {x.shape}; use sample_batch()")
        self._check_inputs(x[None])
        if num_outputs < 1:
            raise PixelNNError(f"num_outputs must be positive, got {num_outputs}")
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        xt = to_tensor(x[None]).to(self.device).expand(num_outputs, -1, -1, -1)  # (num_outputs, C, h, w)
        return to_uint8(self.generator(xt, dropout_on=True, generator=g))

    def sample_batch(self, inputs: np.ndarray, num_outputs: int = 72, seed: int = 0) -> np.ndarray:
        """``sample`` for each of ``inputs`` (B, h, w, C) -> (B, num_outputs, H, W, 3) uint8.

        Result ``i`` equals ``sample(inputs[i], num_outputs, seed)``: one forward pass per input.
        """
        inputs = np.asarray(inputs)
        if inputs.ndim != 4:
            raise PixelNNError(f"sample_batch() takes (B, h, w, C) inputs, got shape {inputs.shape}")
        self._check_inputs(inputs)
        c = self.config
        out = np.empty((len(inputs), num_outputs, c.size, c.size, c.out_channels), np.uint8)
        for i, x in enumerate(inputs):
            out[i] = self.sample(x, num_outputs, seed)
        return out


def mean_pairwise_l1(samples: np.ndarray) -> float:
    """Diversity of (N, H, W, C) uint8 samples: mean |a - b| over all pairs, in [0, 1] units."""
    s = torch.from_numpy(np.asarray(samples, np.float32) / 255.0).flatten(1)  # (N, D)
    n = len(s)
    if n < 2:
        return 0.0
    d = torch.cdist(s, s, p=1) / s.shape[1]
    return float(d[torch.triu_indices(n, n, 1).unbind()].mean())


def evaluate_pix2pix(sampler: Pix2PixSampler, split: SplitData, limit: int | None = None,
                     spread_images: int = 8, spread_samples: int = 8, seed: int = 0) -> dict[str, Any]:
    """Fidelity of one dropout sample per image, and spread of the samples.

    Returns
    -------
    dict
        ``n``, ``psnr``, ``ssim``, ``l1`` (mean |G(x) - y| in [0, 1] units, one sample per image, seed
        ``seed``) and ``pairwise_l1`` (mean over the first ``spread_images`` images of the mean pairwise
        L1 among ``spread_samples`` samples).
    """
    n = len(split) if limit is None else min(limit, len(split))
    inputs, photos = np.asarray(split.inputs[:n]), np.asarray(split.photos[:n])
    out = _one_sample_each(sampler.generator, inputs, seed)
    spread = [mean_pairwise_l1(sampler.sample(x, spread_samples, seed)) for x in inputs[:spread_images]]
    return {"n": n, "psnr": float(np.mean(psnr(out, photos))), "ssim": float(np.mean(ssim(out, photos))),
            "l1": float(np.abs(out.astype(np.float32) - photos).mean() / 255.0),
            "pairwise_l1": float(np.mean(spread)) if spread else 0.0}


@torch.inference_mode()
def _one_sample_each(generator: Generator, inputs: np.ndarray, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """One dropout-on sample G(x) per input (N, h, w, C) -> (N, S, S, 3) uint8 (deterministic given seed)."""
    was_training = generator.training
    generator.eval()
    device = module_device(generator)
    g = torch.Generator(device=device).manual_seed(seed)
    outs = [to_uint8(generator(to_tensor(inputs[i:i + batch_size]).to(device), dropout_on=True, generator=g))
            for i in range(0, len(inputs), batch_size)]
    generator.train(was_training)
    c = generator.config
    return np.concatenate(outs) if outs else np.zeros((0, c.size, c.size, c.out_channels), np.uint8)


# ----------------------------------------------------------------------------- training
def _lr_factor(progress: float) -> float:
    """pix2pix's schedule: constant for the first half, then linear decay to 0; ``progress`` in [0, 1]."""
    return 1.0 if progress < 0.5 else max(0.0, 2.0 * (1.0 - progress))


def gan_loss(logits: torch.Tensor, real: bool, kind: str = "bce") -> torch.Tensor:
    """Adversarial loss of patch logits against the label real (1) or fake (0)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(logits, target)


def _sample_grid(generator: Generator, split: SplitData, n: int = 8, draws: int = 3) -> np.ndarray:
    """Rows: input | ``draws`` dropout samples (seeds 0, 1, ...) | photo, for ``n`` val images."""
    idx = np.linspace(0, len(split) - 1, min(n, len(split))).astype(int)
    inputs, photos = np.asarray(split.inputs[idx]), np.asarray(split.photos[idx])
    return image_grid([inputs] + [_one_sample_each(generator, inputs, seed=s) for s in range(draws)] + [photos])


def _save_state(path: Path, gen: nn.Module, disc: nn.Module, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, drop_rng: torch.Generator, rng: np.random.Generator, step: int,
                elapsed: float, images_seen: int) -> None:
    tensors = {**optimizer_tensors(opt_g, "g."), **optimizer_tensors(opt_d, "d."),
               "dropout_rng": drop_rng.get_state().clone()}
    tensors = with_weights(tensors, {"generator": gen, "discriminator": disc})
    save_train_state(path, tensors, step=step, elapsed=elapsed, images_seen=images_seen, rng=rng)


def _load_state(path: Path, gen: nn.Module, disc: nn.Module, weight_files: list[Path], opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, drop_rng: torch.Generator, rng: np.random.Generator
                ) -> tuple[int, float, int]:
    tensors, step, elapsed, images_seen = load_train_state(path, rng)
    g_w, d_w = take_weights(tensors, "generator"), take_weights(tensors, "discriminator")
    if g_w is None or d_w is None:
        check_weight_steps(path, step, weight_files)
    else:
        how = "pass resume=False (--restart) to start over"
        load_state_checked(gen, g_w, path, "pix2pix generator weights in the training state", how)
        load_state_checked(disc, d_w, path, "pix2pix discriminator weights in the training state", how)
    load_optimizer_tensors(opt_g, tensors, "g.")
    load_optimizer_tensors(opt_d, tensors, "d.")
    try:
        drop_rng.set_state(tensors["dropout_rng"])
    except (KeyError, RuntimeError) as e:  # e.g. a CPU generator's state on a CUDA one
        raise PixelNNError(f"cannot restore the dropout RNG from {path} on {drop_rng.device} ({e}); resume on the "
                           f"device it was trained on, or pass resume=False (--restart) to start over") from None
    return step, elapsed, images_seen


def train_pix2pix(data_dir: str | Path, out_dir: str | Path, config: Pix2PixConfig | None = None, *,
                  resume: bool = True, progress: bool = True, final_eval_limit: int | None = None,
                  should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Train (or resume training) pix2pix on a prepared dataset.

    Parameters
    ----------
    data_dir : path
        A dataset written by ``pixelnn prepare`` (inputs (N, s, s, C), photos (N, S, S, 3)).
    out_dir : path
        Checkpoints, log and samples. If it holds a checkpoint and ``resume`` is true, training
        continues from it (same architectures); ``config.max_steps`` and ``config.minutes`` count in
        total, across runs.
    config : Pix2PixConfig, optional
        Batch size, loss and optimiser settings, budgets (``minutes``, ``max_steps``), ``num_threads``, seed.
    final_eval_limit : int, optional
        Evaluate the final generator on at most this many val images (default: all).
    should_stop : callable, optional
        ``should_stop(step) -> bool``, checked before every step: stop early and save a resumable
        checkpoint when it returns true. Ctrl-C does the same and then re-raises KeyboardInterrupt.

    Returns
    -------
    TrainResult
        ``metrics`` holds :func:`evaluate_pix2pix`'s numbers on the val split plus run statistics.
    """
    config = config or Pix2PixConfig()
    out_dir = Path(out_dir)
    device, ds, train_split, val_split = start_training(data_dir, config.device, config.num_threads)
    task = ds.task
    rng = np.random.default_rng(config.seed)  # batches and flips
    drop_rng = torch.Generator(device=device).manual_seed(config.seed + 1)  # dropout masks during training

    g_path, d_path, state_path = out_dir / FILES.generator, out_dir / FILES.discriminator, out_dir / FILES.state
    resuming = resume and g_path.is_file() and d_path.is_file() and state_path.is_file()
    if resuming:
        gen, disc = load_model(g_path, "generator"), load_model(d_path, "discriminator")
        log.info("resuming from %s", out_dir)
    else:
        if g_path.exists():
            log.warning("overwriting the pix2pix model in %s", out_dir)
        in_channels = train_split.inputs.shape[-1]
        g_cfg = GeneratorConfig(in_channels=in_channels, out_channels=3, size=task.size,
                                input_size=train_split.inputs.shape[1], ngf=config.ngf,
                                depth=config.depth or auto_depth(task.size), dropout=config.dropout,
                                num_dropout=config.num_dropout, norm=config.norm)
        d_cfg = DiscriminatorConfig(in_channels=in_channels, out_channels=3, ndf=config.ndf,
                                    num_layers=config.disc_layers, norm=config.norm)
        with torch.random.fork_rng():  # initialise from the seed without touching the caller's RNG
            torch.manual_seed(config.seed)
            gen, disc = Generator(g_cfg), Discriminator(d_cfg)
            for m in list(gen.modules()) + list(disc.modules()):  # pix2pix init: N(0, 0.02)
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    nn.init.zeros_(m.bias)
    if (train_split.inputs.shape[1], train_split.inputs.shape[-1]) != (gen.config.input_size, gen.config.in_channels):
        raise PixelNNError(f"the checkpoint in {out_dir} expects {gen.config.input_size}px inputs with "
                           f"{gen.config.in_channels} channels; {data_dir} has {train_split.inputs.shape[1:]}")
    gen.to(device).train()
    disc.to(device).train()
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=betas)
    step, elapsed_before, images_seen = 0, 0.0, 0
    if resuming:
        step, elapsed_before, images_seen = _load_state(state_path, gen, disc, [g_path, d_path], opt_g, opt_d,
                                                        drop_rng, rng)
        log.info("resumed at step %d (%.0f s trained)", step, elapsed_before)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FILES.samples).mkdir(exist_ok=True)
    for d in (out_dir, out_dir / FILES.samples):
        recover_all(d)  # temporary files of a killed run
    write_json(out_dir / FILES.config, {
        "format": FORMAT, "version": VERSION, "task": task.to_dict(), "generator": _to_dict(gen.config),
        "discriminator": _to_dict(disc.config), "train": config.to_dict(), "device": str(device),
        "dataset": dataset_record(data_dir, ds),
    })
    size = gen.config.size
    ema: dict[str, float] = {}

    def train_step(step: int, frac: float) -> None:
        nonlocal images_seen
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = config.lr * _lr_factor(frac)
        x, y = draw_batch(train_split, config.batch_size, rng, config.augment_flip, device,
                          normals=task.name == "normals")  # (B,C,s,s), (B,3,S,S)
        x_up = upsample_input(x, size)  # (B, C, S, S), what D sees as the condition
        fake = gen(x, dropout_on=True, generator=drop_rng)  # (B, 3, S, S)

        # D step: real pairs -> 1, generated pairs -> 0 (halved, as pix2pix).
        disc.requires_grad_(True)
        loss_d = 0.5 * (gan_loss(disc(x_up, y), True, config.gan_loss)
                        + gan_loss(disc(x_up, fake.detach()), False, config.gan_loss))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # G step: fool D, and stay close to the photo in L1.
        disc.requires_grad_(False)
        loss_g_gan = gan_loss(disc(x_up, fake), True, config.gan_loss)
        loss_l1 = F.l1_loss(fake, y)
        loss_g = loss_g_gan + config.lambda_l1 * loss_l1
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        images_seen += config.batch_size
        for k, v in (("d", loss_d.item()), ("g_gan", loss_g_gan.item()), ("l1", loss_l1.item())):
            ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
        check_finite_loss(ema["d"] + ema["g_gan"] + ema["l1"], step, config.lr)  # before this step is saved

    def save_all(step: int, elapsed: float) -> None:
        save_model(gen, g_path, "generator", {"task": json.dumps(task.to_dict()), "step": str(step)})
        save_model(disc, d_path, "discriminator", {"step": str(step)})
        crash_point("checkpoint")
        _save_state(state_path, gen, disc, opt_g, opt_d, drop_rng, rng, step, elapsed, images_seen)

    def validate(step: int, elapsed: float, images_per_second: float) -> None:
        _log_validation(gen, val_split, out_dir, step, elapsed, ema, images_per_second)

    metrics: dict[str, Any] = {}

    def finish(run: LoopResult) -> None:
        disc.requires_grad_(True)
        gen.eval()
        save_image(out_dir / FILES.samples / "latest.png", _sample_grid(gen, val_split))
        _log_validation(gen, val_split, out_dir, run.steps, run.elapsed, ema, run.images_per_second)
        metrics.update(evaluate_pix2pix(Pix2PixSampler(gen, task), val_split, limit=final_eval_limit))
        metrics.update({"split": "val", "sampling": "one dropout-on sample per image (seed 0)", "steps": run.steps,
                        "images_seen": images_seen, "train_seconds": run.elapsed,
                        "images_per_second": run.images_per_second, "num_threads": torch.get_num_threads(),
                        "device": str(device),
                        "generator_parameters": sum(p.numel() for p in gen.parameters()),
                        "discriminator_parameters": sum(p.numel() for p in disc.parameters())})
        write_json(out_dir / FILES.metrics, metrics)
        log.info("pix2pix val PSNR %.2f dB, SSIM %.4f, L1 %.4f, sample spread %.4f after %d steps (%.1f img/s)",
                 metrics["psnr"], metrics["ssim"], metrics["l1"], metrics["pairwise_l1"], run.steps,
                 run.images_per_second)

    run = run_budgeted(train_step, save=save_all, max_steps=config.max_steps, batch_size=config.batch_size,
                       step=step, budget_s=config.minutes * 60 if config.minutes else None, clock=config.clock,
                       elapsed_before=elapsed_before, progress=progress, desc="pix2pix",
                       postfix=lambda: {"d": f"{ema['d']:.3f}", "g": f"{ema['g_gan']:.3f}", "l1": f"{ema['l1']:.3f}"},
                       val_every=config.val_every, on_validate=validate, sample_every=config.sample_every,
                       sample_grid=lambda: _sample_grid(gen, val_split), samples_dir=out_dir / FILES.samples,
                       should_stop=should_stop, on_finish=finish)
    return TrainResult(out_dir, run.steps, run.elapsed, run.images_per_second, metrics)


def _log_validation(gen: Generator, val_split: SplitData, out_dir: Path, step: int, elapsed: float,
                    ema: dict[str, float], images_per_second: float, limit: int = 256) -> dict[str, Any]:
    """Val L1 and PSNR of one dropout sample per image (seed 0) on up to ``limit`` images; appended to the log."""
    n = min(limit, len(val_split))
    inputs, photos = np.asarray(val_split.inputs[:n]), np.asarray(val_split.photos[:n])
    out = _one_sample_each(gen, inputs, seed=0)
    entry = {"step": step, "elapsed": round(elapsed, 1),
             "train_d": ema.get("d"), "train_g_gan": ema.get("g_gan"),
             "train_l1": ema["l1"] / 2 if "l1" in ema else None,  # [-1, 1] -> [0, 1] units, as val_l1
             "val_l1": round(float(np.abs(out.astype(np.float32) - photos).mean() / 255.0), 5),
             "val_psnr": round(float(np.mean(psnr(out, photos))), 3),
             "images_per_second": round(images_per_second, 2)}
    append_jsonl(out_dir / FILES.log, entry)
    log.info("step %d: val L1 %.4f, PSNR %.2f dB, %.1f img/s", step, entry["val_l1"], entry["val_psnr"],
             images_per_second)
    return entry
