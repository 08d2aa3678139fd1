"""Stage-1 regressor f(x): a fully convolutional U-Net trained with L2 loss (paper eq. 1).

The paper uses PixelNet; any fully convolutional regressor works, so this is a small U-Net
that fits a 2-core CPU budget. The input x is first resized to the output grid (bicubic for
low-resolution images), then encoded and decoded with skip connections. For 3-channel
inputs, the network predicts a residual over the upsampled input, so it starts from bicubic
upsampling and only has to learn what bicubic misses.

Images are handled in [-1, 1] inside the network; :func:`to_tensor` and :func:`to_uint8`
convert from and to uint8 (N, H, W, C) arrays.

A checkpoint is a safetensors file whose metadata carries the JSON config, so
``Regressor.load(path)`` rebuilds the model from the file alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file

from pixelnn.config import RegressorConfig
from pixelnn.errors import PixelNNError
from pixelnn.io import (atomic_path, check_tensors_sha256, config_from, load_state_checked, parse_json,
                        tensors_sha256)


NORMS = ("batch", "group", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    if kind == "none":
        return nn.Identity()
    raise PixelNNError(f"invalid norm {kind!r}; valid: {', '.join(NORMS)}")


def conv_block(c_in: int, c_out: int, norm: str = "batch") -> nn.Sequential:
    """Two 3x3 convolutions, each followed by a normalisation and LeakyReLU; keeps H, W."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        make_norm(norm, c_out),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        make_norm(norm, c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def upsample_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize inputs x (B, C, s, s) to the output grid (B, C, size, size).

    Bicubic for 3-channel images (superres thumbnails), bilinear for 1-channel maps (edges);
    inputs already at ``size`` pass through unchanged.
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    mode = "bicubic" if x.shape[1] == 3 else "bilinear"
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False)


class Regressor(nn.Module):
    """U-Net regressor mapping an input x to a smooth image f(x).

    Parameters
    ----------
    config : RegressorConfig
        ``in_channels``/``out_channels``, output ``size``, ``input_size``, ``base_channels``
        (channels at full resolution, doubled at each of ``depth`` downsamplings, capped at 16x) and
        ``norm``. Each level costs about the same, so the cost stays low at full resolution.
    """

    def __init__(self, config: RegressorConfig):
        super().__init__()
        self.config = config
        c = config.base_channels
        chans = [min(c * 2**i, c * 16) for i in range(config.depth + 1)]  # e.g. 16, 32, 64, 128, 256
        norm = config.norm
        self.stem = conv_block(config.in_channels, chans[0], norm)
        self.down = nn.ModuleList(conv_block(chans[i], chans[i + 1], norm) for i in range(config.depth))
        self.up = nn.ModuleList(conv_block(chans[i + 1] + chans[i], chans[i], norm)
                                for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(chans[0], config.out_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def uses_residual(self) -> bool:
        return self.config.residual_upsample and self.config.in_channels == self.config.out_channels

    def upsample_input(self, x: torch.Tensor) -> torch.Tensor:
        """Resize x (B, C, s, s) to the output grid (B, C, S, S): bicubic for images, bilinear for maps."""
        return upsample_input(x, self.config.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, s, s) in [-1, 1] -> f(x): (B, C_out, S, S) in about [-1, 1]."""
        base = self.upsample_input(x)  # (B, C_in, S, S)
        h = self.stem(base)  # (B, c, S, S)
        skips = [h]
        for block in self.down:
            h = block(F.avg_pool2d(h, 2))  # (B, 2c, S/2, S/2), ...
            skips.append(h)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))  # back up to (B, c, S, S)
        out = self.head(h)  # (B, C_out, S, S)
        if self.uses_residual:
            out = out + base
        return out

    # ----------------------------------------------------------------- checkpoints
    def save(self, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
        """Save weights to safetensors with the config in the metadata (atomic)."""
        meta = {"format": "pixelnn-regressor", "version": "1", "config": json.dumps(self.config.to_dict())}
        meta.update(extra_metadata or {})
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta["tensors_sha256"] = tensors_sha256(state)  # checked by load(): a damaged file is refused
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, map_location: str = "cpu") -> "Regressor":
        """Rebuild a regressor from a safetensors checkpoint alone.

        One-line PixelNNErrors for a missing, unreadable or foreign file, a config in the metadata that is not
        valid JSON or does not fit the tensors, and tensors that differ from the digest the file records
        (``tensors_sha256``, written by :meth:`save`: a damaged file).
        """
        path = Path(path)
        if not path.is_file():
            raise PixelNNError(f"no regressor checkpoint at {path}; train one with `pixelnn train`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
        except Exception as e:  # corrupt or foreign file
            msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
            raise PixelNNError(f"cannot read regressor checkpoint {path}: {msg}") from None
        if "config" not in meta:
            raise PixelNNError(f"cannot read regressor checkpoint {path}: its metadata has no config "
                               f"(not a PixelNN regressor)")
        source = f"regressor checkpoint {path} (metadata 'config')"
        config = config_from(RegressorConfig, parse_json(meta["config"], source, expect=dict), source)
        check_tensors_sha256(state, meta, path, "regressor weights",
                             "retrain the model, or restore the file from a backup")
        with torch.device("meta"):  # no random initialisation (0.07 s of every start-up): the file has every tensor
            model = cls(config)
        load_state_checked(model, state, path, "regressor weights", assign=True)
        return model.eval().to(map_location)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module with neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.float32, copy=True)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    y = ((x.detach().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


@torch.inference_mode()
def predict(model: Regressor, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run f(x) on uint8 inputs (N, s, s, C) and return uint8 images (N, S, S, 3), on the model's device."""
    model.eval()
    device = module_device(model)
    outs = [to_uint8(model(to_tensor(inputs[i:i + batch_size]).to(device))) for i in range(0, len(inputs), batch_size)]
    if not outs:
        return np.zeros((0, model.config.size, model.config.size, model.config.out_channels), np.uint8)
    return np.concatenate(outs)
