"""Per-pixel descriptors for stage-2 matching (paper section 3, "Pixel representations").

Stage 2 compares pixels of the stage-1 output f(x) of a query with pixels of the stage-1 outputs
f(x_n) of its exemplars (paper eq. 3) by cosine similarity. A pixel is described by a
*hypercolumn* [Hariharan et al.]: the activations of several layers of a convolutional network at
that pixel, stacked, so that shallow layers contribute local detail and deep layers context.

Definition (for any set of L layers; :class:`HypercolumnDescriptor` uses the five VGG-16 layers
relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: 64 + 128 + 256 + 512 + 512 = 1472 dims)

1. each layer's activation map a_l (N, C_l, h_l, w_l) is L2-normalised over channels at every
   spatial position, *at its native resolution*: n_l = a_l / ||a_l||. Without this the deep
   layers, whose activations are much larger and which have most of the channels, would dominate
   the cosine; after it every layer has the same weight (a pixel whose activations are all zero
   keeps a zero vector);
2. n_l is upsampled bilinearly to the output grid (H, W) (``align_corners=False``);
3. the L upsampled maps are concatenated and scaled by 1/sqrt(L): u (N, D, H, W), D = sum C_l;
4. the descriptor is h = u / ||u|| per pixel.

Between native pixels the upsampled unit vectors average to ||up(n_l)|| <= 1, hence step 4; the
1/sqrt(L) of step 3 cancels in step 4 and only keeps ||u|| <= 1.

PCA reduction (:func:`fit_pca`, :class:`PixelPCA`): the reduced descriptor is
``normalise((h - mean) @ components)`` with ``components`` (D, d). Projection is linear and so
commutes with bilinear upsampling, so :func:`project_hypercolumns` projects each layer's
normalised map at its native resolution with its block of rows of ``components``, upsamples the
d-channel projections and sums them; the per-pixel norm ||u|| needed for step 4 is computed
exactly from dot products of neighbouring native pixels (:func:`upsampled_sq_norm`), so the
1472-channel map at full resolution is never built. :func:`project_hypercolumns_naive` is the
reference (build h, then project); the two agree to float rounding.

Plain functions on tensors come first; :class:`HypercolumnDescriptor` and
:class:`RegressorDescriptor` wrap them for uint8 image batches, and :func:`make_descriptor`
builds one by name. Shapes: N images, P = H * W pixels, D full dims, d output dims.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelnn.errors import PixelNNError
from pixelnn.io import atomic_path
from pixelnn.models.vgg import HYPERCOLUMN_LAYERS, VGG16, imagenet_normalize

log = logging.getLogger(__name__)

#: Channels of the VGG-16 hypercolumn layers relu1_2 ... relu5_3 (sum 1472).
HYPERCOLUMN_CHANNELS = (64, 128, 256, 512, 512)

#: Names accepted by :func:`make_descriptor`.
DESCRIPTOR_NAMES = ("hypercolumn", "regressor")

#: What a descriptor is fed: the stage-1 outputs f(x) (or any photos) or the inputs x.
TAKES = ("stage1", "inputs")

_EPS = 1e-12  # as F.normalize
_PCA_FORMAT = "pixelnn-pixel-pca"


# ---------------------------------------------------------------------------------------------
# Plain functions on tensors
# ---------------------------------------------------------------------------------------------

def l2_normalize(x: torch.Tensor, dim: int = 1, eps: float = _EPS) -> torch.Tensor:
    """``x / max(||x||, eps)`` along ``dim`` (zero vectors stay zero)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _check_maps(maps: Sequence[torch.Tensor]) -> None:
    if len(maps) == 0:
        raise ValueError("no layer maps given")
    n = maps[0].shape[0]
    for m in maps:
        if m.ndim != 4 or m.shape[0] != n:
            raise ValueError(f"layer maps must be (N, C, h, w) with the same N; got {[tuple(m.shape) for m in maps]}")


def interp_weights(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-D weights of bilinear resizing ``in_size -> out_size`` with ``align_corners=False``.

    Output pixel o = w0[o] * input[i0[o]] + w1[o] * input[i0[o] + 1], exactly as
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` computes it (source coordinate
    ``(o + 0.5) * in / out - 0.5`` clamped at 0). At the far border, where PyTorch reads
    ``input[in - 1]`` twice, ``w1`` is 0 (the index i0 + 1 is then out of range and must be padded).

    Returns
    -------
    i0 : Tensor, (out_size,) int64
    w0, w1 : Tensor, (out_size,) float32
    """
    scale = in_size / out_size
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0.0)  # (out,)
    i0 = src.floor().long().clamp(max=in_size - 1)
    lam = (src - i0).clamp(0.0, 1.0)
    last = i0 == in_size - 1
    w1 = torch.where(last, torch.zeros_like(lam), lam)
    w0 = 1.0 - w1
    return i0, w0.float(), w1.float()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def upsampled_sq_norm(n: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Squared channel norm of ``bilinear_upsample(n)`` at every output pixel, without upsampling n.

    An output pixel is a weighted sum of (at most) 4 neighbouring input pixels, so its squared norm
    is a quadratic form in their 4x4 Gram matrix; the needed dot products of each pixel with its
    right, lower, lower-right and lower-left neighbours are computed at the native resolution.

    Parameters
    ----------
    n : Tensor, (N, C, h, w)
    size : int or (H, W)
        Output grid.

    Returns
    -------
    Tensor, (N, H, W)
        Equals ``(F.interpolate(n, size, mode="bilinear", align_corners=False) ** 2).sum(1)``.
    """
    H, W = _as_hw(size)
    _, _, h, w = n.shape
    if (h, w) == (H, W):
        return (n * n).sum(1)
    # n(i, j) = pad[i, j + 1]; zero for i in {h, h+1} and j in {-1, w, w+1}.
    pad = F.pad(n, (1, 2, 0, 2))  # (N, C, h+2, w+3)
    base = pad[:, :, 0:h + 1, 1:w + 2]  # (N, C, h+1, w+1): n(i, j) for i <= h, j <= w

    def dots(dy: int, dx: int) -> torch.Tensor:  # <n(i, j), n(i+dy, j+dx)>: (N, h+1, w+1)
        return (base * pad[:, :, dy:dy + h + 1, 1 + dx:w + 2 + dx]).sum(1)

    d00, d01, d10, d11, d1m = dots(0, 0), dots(0, 1), dots(1, 0), dots(1, 1), dots(1, -1)
    y0, a0, a1 = interp_weights(h, H)
    x0, b0, b1 = interp_weights(w, W)
    a0, a1 = a0.to(n)[:, None], a1.to(n)[:, None]  # (H, 1)
    b0, b1 = b0.to(n)[None, :], b1.to(n)[None, :]  # (1, W)
    w00, w01, w10, w11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1  # (H, W)

    def at(d: torch.Tensor, dy: int, dx: int) -> torch.Tensor:  # d at corner (y0 + dy, x0 + dx): (N, H, W)
        return d[:, (y0 + dy)[:, None], (x0 + dx)[None, :]]

    sq = (w00 * w00 * at(d00, 0, 0) + w01 * w01 * at(d00, 0, 1)
          + w10 * w10 * at(d00, 1, 0) + w11 * w11 * at(d00, 1, 1))
    sq = sq + 2.0 * (w00 * w01 * at(d01, 0, 0) + w10 * w11 * at(d01, 1, 0)
                     + w00 * w10 * at(d10, 0, 0) + w01 * w11 * at(d10, 0, 1)
                     + w00 * w11 * at(d11, 0, 0) + w01 * w10 * at(d1m, 0, 1))
    return sq.clamp(min=0.0)


def hypercolumns(maps: Sequence[torch.Tensor], size: int | Sequence[int], out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Full hypercolumn descriptors from raw layer activations (see the module docstring).

    Parameters
    ----------
    maps : sequence of Tensor, each (N, C_l, h_l, w_l)
        Raw activations of the L layers, any resolutions.
    size : int or (H, W)
        Output grid.
    out : Tensor, (N, H * W, D) float32, optional
        Contiguous tensor to write into (saves a copy of the largest array).

    Returns
    -------
    Tensor, (N, H * W, D) float32, D = sum C_l
        Unit L2 norm per pixel (zero where every layer is zero).
    """
    _check_maps(maps)
    H, W = _as_hw(size)
    N, D = maps[0].shape[0], sum(m.shape[1] for m in maps)
    if out is None:
        out = torch.empty(N, H * W, D, device=maps[0].device)
    elif tuple(out.shape) != (N, H * W, D) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 ({N}, {H * W}, {D}) tensor, got {tuple(out.shape)}")
    grid = out.view(N, H, W, D)  # channels last: each layer fills its block of channels
    scale = 1.0 / math.sqrt(len(maps))
    start = 0
    for m in maps:
        n = l2_normalize(m.float()) * scale  # (N, C_l, h_l, w_l)
        n = _resize(n.contiguous(memory_format=torch.channels_last), (H, W))  # (N, C_l, H, W), NHWC in memory
        grid[..., start:start + m.shape[1]] = n.permute(0, 2, 3, 1)
        start += m.shape[1]
    out /= torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_(min=_EPS)  # h = u / ||u||
    return out


def _split_components(pca: "PixelPCA", channels: Sequence[int]) -> list[torch.Tensor]:
    if sum(channels) != pca.in_dims:
        raise PixelNNError(f"PCA was fit on {pca.in_dims}-d descriptors ({pca.source}); these layers give "
                           f"{sum(channels)} dims")
    return list(torch.split(pca.components, list(channels), dim=0))  # [(C_l, d)]


def project_hypercolumns(maps: Sequence[torch.Tensor], size: int | Sequence[int], pca: "PixelPCA") -> torch.Tensor:
    """PCA-reduced hypercolumns, projecting each layer at its native resolution (fast path).

    With n_l the normalised layer maps, u = concat(up(n_l)) / sqrt(L) and h = u / ||u||::

        (h - mean) @ W = sum_l up(n_l @ W_l) / (sqrt(L) ||u||) - mean @ W
        ||u||^2 = sum_l ||up(n_l)||^2 / L            (from :func:`upsampled_sq_norm`)

    where W_l is layer l's block of rows of ``pca.components``. Only d-channel maps are upsampled.

    Parameters
    ----------
    maps : sequence of Tensor, each (N, C_l, h_l, w_l)
        Raw activations; sum C_l must equal ``pca.in_dims`` and the order match the fit.
    size : int or (H, W)
    pca : PixelPCA

    Returns
    -------
    Tensor, (N, H * W, d) float32, unit L2 norm per pixel.
    """
    _check_maps(maps)
    H, W = _as_hw(size)
    dev = maps[0].device
    blocks = [b.to(dev) for b in _split_components(pca, [m.shape[1] for m in maps])]
    N = maps[0].shape[0]
    proj = torch.zeros(N, H, W, pca.dims, device=dev)  # (N, H, W, d)
    sq = torch.zeros(N, H, W, device=dev)  # (N, H, W): L * ||u||^2
    for m, w_l in zip(maps, blocks):
        n = l2_normalize(m.float())  # (N, C_l, h_l, w_l)
        p = torch.einsum("nchw,cd->nhwd", n, w_l).permute(0, 3, 1, 2)  # (N, d, h_l, w_l), NHWC in memory
        proj += _resize(p, (H, W)).permute(0, 2, 3, 1)
        sq += upsampled_sq_norm(n, (H, W))
    norm_u = sq.sqrt_()  # sqrt(L) * ||u||, so proj / norm_u = (u @ W) / ||u||
    denom = norm_u.clamp_(min=_EPS * math.sqrt(len(maps)))
    proj /= denom[..., None]
    proj -= (pca.mean @ pca.components).to(dev)  # (N, H, W, d) = (h - mean) @ W
    return l2_normalize(proj, dim=-1).reshape(N, H * W, pca.dims)


def project_hypercolumns_naive(maps: Sequence[torch.Tensor], size: int | Sequence[int],
                               pca: "PixelPCA") -> torch.Tensor:
    """Reference for :func:`project_hypercolumns`: build the full (N, H*W, D) hypercolumns, then project."""
    h = hypercolumns(maps, size)  # (N, P, D)
    if h.shape[-1] != pca.in_dims:
        raise PixelNNError(f"PCA was fit on {pca.in_dims}-d descriptors ({pca.source}); these layers give "
                           f"{h.shape[-1]} dims")
    return l2_normalize((h - pca.mean) @ pca.components, dim=-1)


def sample_hypercolumns(maps: Sequence[torch.Tensor], size: int | Sequence[int], index: torch.Tensor) -> torch.Tensor:
    """Full hypercolumns at selected pixels only (same values as ``hypercolumns(maps, size)[i, index[i]]``).

    Parameters
    ----------
    maps : sequence of Tensor, each (N, C_l, h_l, w_l)
    size : int or (H, W)
    index : Tensor, (N, K) int64
        Flat pixel indices ``y * W + x`` per image.

    Returns
    -------
    Tensor, (N, K, D) float32, unit norm per row.
    """
    _check_maps(maps)
    H, W = _as_hw(size)
    ys, xs = index // W, index % W  # (N, K)
    batch = torch.arange(index.shape[0])[:, None]  # (N, 1)
    parts = []
    for m in maps:
        n = l2_normalize(m.float()).permute(0, 2, 3, 1)  # (N, h, w, C)
        h, w = n.shape[1:3]
        y0, a0, a1 = interp_weights(h, H)
        x0, b0, b1 = interp_weights(w, W)
        iy0, iy1 = y0[ys], (y0[ys] + 1).clamp(max=h - 1)  # (N, K)
        ix0, ix1 = x0[xs], (x0[xs] + 1).clamp(max=w - 1)
        wa0, wa1, wb0, wb1 = a0[ys][..., None], a1[ys][..., None], b0[xs][..., None], b1[xs][..., None]
        v = (wa0 * (wb0 * n[batch, iy0, ix0] + wb1 * n[batch, iy0, ix1])
             + wa1 * (wb0 * n[batch, iy1, ix0] + wb1 * n[batch, iy1, ix1]))  # (N, K, C)
        parts.append(v)
    return l2_normalize(torch.cat(parts, dim=-1) / math.sqrt(len(maps)), dim=-1)


# ---------------------------------------------------------------------------------------------
# PCA
# ---------------------------------------------------------------------------------------------

@dataclass
class PixelPCA:
    """A linear reduction of pixel descriptors: ``reduced = normalise((h - mean) @ components)``.

    Attributes
    ----------
    mean : Tensor, (D,) float32
    components : Tensor, (D, d) float32
        Orthonormal columns, by decreasing variance; each column's largest entry is positive.
    explained_variance : Tensor, (d,) float32
        Variance of the training descriptors along each component.
    total_variance : float
        Total variance of the training descriptors (sum over all D dims).
    source : str
        Name of the full descriptor it was fit on (e.g. ``"vgg16-hypercolumn"``).
    channels : tuple of int
        Channels of the layers making up D, in order (checked when the PCA is applied).
    info : dict
        Free-form fit details (images, pixels per image, seed), saved as JSON.
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor
    total_variance: float
    source: str = "vgg16-hypercolumn"
    channels: tuple[int, ...] = HYPERCOLUMN_CHANNELS
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).contiguous()
        self.components = torch.as_tensor(self.components, dtype=torch.float32).contiguous()
        self.explained_variance = torch.as_tensor(self.explained_variance, dtype=torch.float32).contiguous()
        self.channels = tuple(int(c) for c in self.channels)
        D = self.mean.shape[0]
        if self.mean.ndim != 1 or self.components.ndim != 2 or self.components.shape[0] != D:
            raise PixelNNError(f"PCA mean must be (D,) and components (D, d); got {tuple(self.mean.shape)}, "
                               f"{tuple(self.components.shape)}")
        if sum(self.channels) != D:
            raise PixelNNError(f"PCA layer channels {self.channels} do not add up to D = {D}")

    @property
    def in_dims(self) -> int:
        """D, the full descriptor's dimension."""
        return int(self.mean.shape[0])

    @property
    def dims(self) -> int:
        """d, the reduced dimension."""
        return int(self.components.shape[1])

    @property
    def variance_kept(self) -> float:
        """Fraction of the training descriptors' variance kept by the d components."""
        return float(self.explained_variance.sum()) / self.total_variance if self.total_variance > 0 else 1.0

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """Reduce full descriptors (..., D) -> unit-norm (..., d)."""
        return l2_normalize((h.float() - self.mean) @ self.components, dim=-1)

    def save(self, path: str | Path) -> None:
        """Write a safetensors file (tensors + JSON metadata), atomically."""
        from safetensors.torch import save_file

        meta = {"format": _PCA_FORMAT, "version": "1",
                "pca": json.dumps({"source": self.source, "channels": list(self.channels),
                                   "total_variance": self.total_variance, "info": self.info})}
        tensors = {"mean": self.mean, "components": self.components, "explained_variance": self.explained_variance}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "PixelPCA":
        """Read a file written by :meth:`save`."""
        from safetensors.torch import load_file, safe_open

        path = Path(path)
        if not path.is_file():
            raise PixelNNError(f"no PCA file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != _PCA_FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {_PCA_FORMAT!r}")
            info = json.loads(meta["pca"])
            t = load_file(str(path))
            return cls(t["mean"], t["components"], t["explained_variance"], float(info["total_variance"]),
                       source=info["source"], channels=tuple(info["channels"]), info=info.get("info", {}))
        except PixelNNError:
            raise
        except Exception as e:  # corrupt or foreign file
            raise PixelNNError(f"cannot read PCA file {path}: {e}") from None


def fit_pca(images: np.ndarray | torch.Tensor, dims: int = 64, pixels_per_image: int = 256, seed: int = 0, *,
            descriptor: "LayerDescriptor | None" = None, batch_size: int = 8) -> PixelPCA:
    """Fit a PCA on the full descriptors of randomly sampled pixels of exemplar images.

    Parameters
    ----------
    images : uint8 array, (N, H, W, C)
        What ``descriptor`` takes: photos / stage-1 outputs (N, H, W, 3) for the hypercolumn,
        inputs x for a :class:`RegressorDescriptor`.
    dims : int
        d, number of components (1 <= d <= D).
    pixels_per_image : int
        Pixels sampled per image without replacement (all pixels if larger than H * W).
    seed : int
        Seed of the pixel sampling; the fit is deterministic given it.
    descriptor : LayerDescriptor, optional
        Full descriptor to reduce (its ``pca`` is ignored); defaults to :class:`HypercolumnDescriptor`.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    PixelPCA
    """
    descriptor = HypercolumnDescriptor() if descriptor is None else descriptor
    D = sum(descriptor.channels)
    if not 1 <= dims <= D:
        raise PixelNNError(f"PCA dims must be between 1 and {D}, got {dims}")
    if pixels_per_image < 1:
        raise PixelNNError(f"pixels_per_image must be >= 1, got {pixels_per_image}")
    N = len(images)
    if N == 0:
        raise PixelNNError("fit_pca needs at least one image")
    rng = np.random.default_rng(seed)
    count = 0
    shift: torch.Tensor | None = None  # first batch mean, subtracted for numerical stability
    s1 = torch.zeros(D, dtype=torch.float64)
    s2 = torch.zeros(D, D, dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, N, batch_size):
            batch = images[start:start + batch_size]
            maps, (H, W) = descriptor.layer_maps(batch)
            k = min(pixels_per_image, H * W)
            index = torch.from_numpy(np.stack([rng.choice(H * W, size=k, replace=False)
                                               for _ in range(len(batch))])).long()  # (B, k)
            x = sample_hypercolumns(maps, (H, W), index).reshape(-1, D)  # (B*k, D)
            if shift is None:
                shift = x.mean(0)
            xc = x - shift
            s1 += xc.sum(0).double()
            s2 += (xc.T @ xc).double()
            count += x.shape[0]
    mean_c = s1 / count
    cov = s2 / count - torch.outer(mean_c, mean_c)  # (D, D)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp(min=0.0), evecs.flip(1)
    comps = evecs[:, :dims]  # (D, d)
    signs = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    pca = PixelPCA(mean=(mean_c + shift.double()).float(), components=comps.float(),
                   explained_variance=evals[:dims].float(), total_variance=float(evals.sum()),
                   source=descriptor.base_name, channels=tuple(descriptor.channels),
                   info={"images": N, "pixels_per_image": k, "samples": count, "seed": seed})
    log.info("PCA %d -> %d dims on %d pixels of %d images keeps %.1f%% of the variance",
             D, dims, count, N, 100 * pca.variance_kept)
    return pca


# ---------------------------------------------------------------------------------------------
# Descriptor classes
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def cached_vgg16(device: str = "cpu") -> VGG16:
    """The ImageNet VGG-16 trunk on ``device``, loaded once per process and device, frozen, in eval mode,
    channels-last (oneDNN's NHWC convolutions are ~20% faster on CPU than NCHW here)."""
    from pixelnn.models.vgg import vgg16

    log.debug("loading VGG-16 for hypercolumns on %s", device)
    return vgg16(pretrained=True).requires_grad_(False).eval().to(device, memory_format=torch.channels_last)


class LayerDescriptor:
    """Base class: multi-layer pixel descriptors of uint8 image batches, optionally PCA-reduced.

    Subclasses define ``channels``, ``base_name``, ``takes`` and :meth:`layer_maps`.

    Parameters
    ----------
    pca : PixelPCA, optional
        Reduction fit on this descriptor (same layers); None for the full descriptor.
    batch_size : int
        Images per forward pass.
    autocast : {'off', 'bf16'}
        ``bf16`` runs the network (:meth:`layer_maps`) under ``torch.autocast`` in bfloat16; the layer maps
        are then combined, normalised and projected in float32 as with ``off``. Part of :attr:`name`, so a
        pixel cache never mixes the two.
    """

    channels: tuple[int, ...] = ()
    base_name: str = ""
    takes: str = "stage1"

    def __init__(self, pca: PixelPCA | None = None, batch_size: int = 8, autocast: str = "off") -> None:
        if batch_size < 1:
            raise PixelNNError(f"batch_size must be >= 1, got {batch_size}")
        if autocast not in ("off", "bf16"):
            raise PixelNNError(f"invalid descriptor autocast {autocast!r}; valid: off, bf16")
        self.batch_size = batch_size
        self.pca = pca
        self.autocast = autocast
        self.device = torch.device("cpu")
        if pca is not None and (tuple(pca.channels) != tuple(self.channels)):
            raise PixelNNError(f"PCA was fit on {pca.source} (layer channels {pca.channels}); "
                               f"{self.base_name} has layer channels {tuple(self.channels)}")

    @property
    def dims(self) -> int:
        """Descriptor dimension d (D without PCA)."""
        return self.pca.dims if self.pca is not None else sum(self.channels)

    @property
    def name(self) -> str:
        """e.g. ``"vgg16-hypercolumn"``, ``"vgg16-hypercolumn-pca64"`` or (bf16) ``"vgg16-hypercolumn-pca64-bf16"``."""
        name = self.base_name if self.pca is None else f"{self.base_name}-pca{self.pca.dims}"
        return name if self.autocast == "off" else f"{name}-{self.autocast}"

    def to(self, device: str | torch.device) -> "LayerDescriptor":
        """Compute on ``device`` from now on (descriptors are returned there); returns self."""
        self.device = torch.device(device)
        return self

    def layer_maps(self, batch: np.ndarray | torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Raw layer activations [(B, C_l, h_l, w_l)] of a batch, and the output grid (H, W)."""
        raise NotImplementedError

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Describe every pixel of every image.

        Parameters
        ----------
        images : uint8 array or tensor, (N, H_in, W_in, C)
            See the subclass for what to feed (``takes``).

        Returns
        -------
        Tensor, (N, H * W, d) float32, on the descriptor's device
            Unit L2 norm per pixel; compare with a dot product (cosine).
        """
        N = len(images)
        out: torch.Tensor | None = None
        bf16 = self.autocast == "bf16"
        with torch.inference_mode():
            for start in range(0, N, self.batch_size):
                with torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                    maps, (H, W) = self.layer_maps(images[start:start + self.batch_size])
                if bf16:
                    maps = [m.float() for m in maps]  # (B, C_l, h_l, w_l) float32 from here on
                if out is None:
                    out = torch.empty(N, H * W, self.dims, device=maps[0].device)  # (N, P, d)
                stop = start + maps[0].shape[0]
                if self.pca is None:
                    hypercolumns(maps, (H, W), out=out[start:stop])
                else:
                    out[start:stop] = project_hypercolumns(maps, (H, W), self.pca)
        if out is None:
            raise PixelNNError("no images to describe")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dims={self.dims}, takes={self.takes!r})"


def _check_uint8(images: np.ndarray | torch.Tensor, channels: int, what: str) -> None:
    if images.ndim != 4 or images.shape[-1] != channels or images.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"{what} must be uint8 (N, H, W, {channels}); got {tuple(images.shape)} {images.dtype}")


class HypercolumnDescriptor(LayerDescriptor):
    """VGG-16 hypercolumns (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; 1472 dims, or PCA-reduced).

    Takes the stage-1 outputs f(x) (``takes == "stage1"``), or any photos: uint8 (N, S, S, 3)
    -> (N, S*S, d). The ImageNet VGG-16 is loaded once per process (:func:`cached_vgg16`).

    Parameters
    ----------
    pca : PixelPCA, optional
        From :func:`fit_pca` (default descriptor); None gives the full 1472-d hypercolumn.
    batch_size : int
        Images per VGG forward pass.
    """

    channels = HYPERCOLUMN_CHANNELS
    base_name = "vgg16-hypercolumn"
    takes = "stage1"

    # 16: the K = 11 neighbours in one VGG pass, 12% faster than 8 + 3 on 2 cores at 96x96, and the same values
    # (oneDNN's convolutions give identical activations for every batch of 2 or more; only a batch of 1 differs).
    def __init__(self, pca: PixelPCA | None = None, batch_size: int = 16, autocast: str = "off") -> None:
        super().__init__(pca, batch_size, autocast)

    def layer_maps(self, batch: np.ndarray | torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        _check_uint8(batch, 3, "images")
        x = imagenet_normalize(batch).to(self.device).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
        with torch.inference_mode():
            acts = cached_vgg16(str(self.device))(x, layers=HYPERCOLUMN_LAYERS)
        return list(acts.values()), (int(x.shape[2]), int(x.shape[3]))


def _block_out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise PixelNNError(f"cannot find a convolution in regressor block {type(block).__name__}")
    return int(convs[-1].out_channels)


class RegressorDescriptor(LayerDescriptor):
    """Pixel descriptors from the stage-1 U-Net's own features, computed from the INPUTS x.

    Unlike :class:`HypercolumnDescriptor` (which describes the stage-1 output images f(x)), this
    runs the regressor on the inputs x (``takes == "inputs"``) and records, with forward hooks,
    the activations of ``stem`` (full resolution, c channels) and of every ``up`` block (the
    decoder, from coarse to full resolution) while it produces f(x). They are combined exactly as
    the hypercolumn (per-layer normalisation at native resolution, bilinear upsampling to the
    output grid S x S, concatenation, normalisation; optional PCA with the same fast path).
    With the default config (base 16, depth 4): 16 + 128 + 64 + 32 + 16 = 256 dims.

    Parameters
    ----------
    regressor : Regressor
        Trained stage-1 model; it is run in eval mode (its mode is restored afterwards).
    pca : PixelPCA, optional
        From ``fit_pca(inputs, descriptor=RegressorDescriptor(regressor))``.
    batch_size : int
    """

    base_name = "regressor-unet"
    takes = "inputs"

    def __init__(self, regressor: nn.Module, pca: PixelPCA | None = None, batch_size: int = 16,
                 autocast: str = "off") -> None:
        self.regressor = regressor
        self.layers: list[tuple[str, nn.Module]] = [("stem", regressor.stem)]
        self.layers += [(f"up{i}", block) for i, block in enumerate(regressor.up)]
        self.channels = tuple(_block_out_channels(m) for _, m in self.layers)
        super().__init__(pca, batch_size, autocast)

    def layer_maps(self, batch: np.ndarray | torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        from pixelnn.models.regressor import to_tensor

        cfg = self.regressor.config
        batch = np.asarray(batch.cpu() if isinstance(batch, torch.Tensor) else batch)
        if batch.ndim == 3 and cfg.in_channels == 1:
            batch = batch[..., None]
        _check_uint8(batch, cfg.in_channels, "regressor inputs x")
        acts: dict[str, torch.Tensor] = {}
        hooks = [module.register_forward_hook(lambda _m, _i, out, key=key: acts.__setitem__(key, out))
                 for key, module in self.layers]
        was_training = self.regressor.training
        try:
            self.regressor.eval()
            with torch.inference_mode():
                self.regressor(to_tensor(batch).to(next(self.regressor.parameters()).device))  # f(x) not needed
        finally:
            for hk in hooks:
                hk.remove()
            self.regressor.train(was_training)
        return [acts[key] for key, _ in self.layers], (cfg.size, cfg.size)


def make_descriptor(name: str, *, regressor: nn.Module | None = None, pca: PixelPCA | None = None,
                    batch_size: int | None = None, autocast: str = "off") -> LayerDescriptor:
    """Build a descriptor by name.

    Parameters
    ----------
    name : {'hypercolumn', 'regressor'}
        ``hypercolumn``: :class:`HypercolumnDescriptor` (feed stage-1 outputs f(x));
        ``regressor``: :class:`RegressorDescriptor` (feed inputs x; needs ``regressor``).
    regressor : Regressor, optional
    pca : PixelPCA, optional
    batch_size : int, optional
        Images per forward pass (class default if None).
    autocast : {'off', 'bf16'}
        Precision of the network pass (:class:`LayerDescriptor`).
    """
    kw: dict[str, Any] = {"autocast": autocast, **({} if batch_size is None else {"batch_size": batch_size})}
    if name == "hypercolumn":
        return HypercolumnDescriptor(pca, **kw)
    if name == "regressor":
        if regressor is None:
            raise PixelNNError("descriptor 'regressor' needs the stage-1 regressor (regressor=...)")
        return RegressorDescriptor(regressor, pca, **kw)
    raise PixelNNError(f"invalid descriptor {name!r}; valid: {', '.join(DESCRIPTOR_NAMES)}")
