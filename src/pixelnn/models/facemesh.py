"""MediaPipe's face-mesh landmark model (468 3D landmarks), run in PyTorch.

The model is the float16 ``face_landmark.tflite`` shipped inside the ``mediapipe==0.10.21`` wheel
(``mediapipe/modules/face_landmark/``; installed with ``pip install --no-deps``: its runtime is
never imported, and later mediapipe versions no longer ship the file). It is parsed with the
pure-Python flatbuffer reader of ``tflite==2.18.0`` and run by the small executor below: no
TensorFlow, no TFLite interpreter. ``tests/test_facemesh.py`` checks it against the real TFLite
interpreter (LiteRT) on stored reference outputs.

The graph (one subgraph, 210 ops) uses 7 op types; none has a fused activation:

``DEQUANTIZE``
    float16 constant -> float32 (113 ops, one per weight tensor). Folded at conversion: the cache
    holds the float32 values, exactly the float16 ones widened.
``CONV_2D``
    3x3 stride 2 'SAME' (the stem, 192 -> 96), 1x1 'VALID' (the pointwise halves of the separable
    blocks) and two 3x3 stride 3 'VALID' heads on the final 3x3 map (landmarks, presence).
``DEPTHWISE_CONV_2D``
    3x3 'SAME', stride 1 or 2 (multiplier 1).
``PRELU``
    per-channel slopes.
``ADD``
    the residual connections.
``MAX_POOL_2D``
    2x2 stride 2 'VALID' on the shortcut of the downsampling blocks.
``PAD``
    zero channels appended to the pooled shortcut where a block doubles the channels.

Architecture, as data flows (B = batch)::

    input (B, 3, 192, 192), RGB in [0, 1]
    stem conv 3x3/2 + PReLU                     -> (B, 16, 96, 96)
    residual blocks: x + conv1x1(dwconv3x3(x)), PReLU; a downsampling block has a stride-2 depthwise
    conv and a max-pooled (channel-padded) shortcut
        96x96x16 -> 48x48x32 -> 24x24x64 -> 12x12x128 -> 6x6x128 -> 3x3x128
    two heads from the 6x6x128 map, each blocks to 3x3x32, then a 3x3/3 conv:
        landmarks (B, 1404, 1, 1) = 468 x (x, y, z)
        presence  (B, 1, 1, 1), a logit

Coordinates: x and y in pixels of the 192x192 input (x to the right, y down, 0 at the top-left
corner of the top-left pixel, so a pixel's centre is at +0.5), z in the same pixel units, relative
to the centre of the head, smaller values nearer to the camera. MediaPipe's graph applies a sigmoid
to the presence logit and keeps faces scoring at least 0.5 (:data:`PRESENCE_THRESHOLD`).

The converted weights and the op list are cached in ``cache_dir()/facemesh.safetensors`` (written
atomically; the graph as JSON in the file's metadata), so later runs need neither mediapipe nor
tflite to be importable, only the cache.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelnn.errors import PixelNNError

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "mediapipe"
MODEL_FILE = ("modules", "face_landmark", "face_landmark.tflite")
CACHE_NAME = "facemesh.safetensors"
CACHE_FORMAT = "pixelnn-facemesh-1"  # bump when the cached layout changes: stale caches are rebuilt

INPUT_SIZE = 192
NUM_LANDMARKS = 468
PRESENCE_THRESHOLD = 0.5

INSTALL_MEDIAPIPE = "pip install --no-deps mediapipe==0.10.21"
INSTALL_TFLITE = "pip install tflite==2.18.0"

#: Op types the executor runs (TFLite builtin names).
SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "PRELU", "ADD", "MAX_POOL_2D", "PAD", "DEQUANTIZE")


# --------------------------------------------------------------------------------------------------
# kernels: TFLite semantics on NCHW tensors


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one spatial dimension: (before, after).

    The output has ``ceil(size / stride)`` samples; the total padding is split with the extra
    pixel (if any) at the end, e.g. a 3x3 stride-2 conv on 192 pads (0, 1).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kh: int, kw: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kh, stride)
    left, right = same_padding(x.shape[-1], kw, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)  # (B, C, H + top + bottom, W + left + right)
    return x


def conv2d_tf(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: str,
              groups: int = 1) -> torch.Tensor:
    """TFLite ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` (dilation 1, no fused activation).

    Parameters
    ----------
    x : Tensor, (B, C, H, W)
    weight : Tensor, (O, C / groups, kh, kw)
    bias : Tensor, (O,)
    stride : int
    padding : {'SAME', 'VALID'}
    groups : int
        C for a depthwise conv.

    Returns
    -------
    Tensor, (B, O, H', W')
        H' = ceil(H / stride) for 'SAME', floor((H - kh) / stride) + 1 for 'VALID'.
    """
    if padding == "SAME":
        x = _pad_same(x, weight.shape[-2], weight.shape[-1], stride)
    return F.conv2d(x, weight, bias, stride=stride, groups=groups)


def max_pool_tf(x: torch.Tensor, size: int, stride: int, padding: str) -> torch.Tensor:
    """TFLite ``MAX_POOL_2D``: (B, C, H, W) -> (B, C, H', W'); 'SAME' pads with -inf."""
    if padding == "SAME":
        x = _pad_same(x, size, size, stride, value=float("-inf"))
    return F.max_pool2d(x, size, stride)


def pad_nhwc(x: torch.Tensor, paddings: list[list[int]]) -> torch.Tensor:
    """TFLite ``PAD`` with its NHWC ``paddings`` ((4, 2): before/after per axis) on an NCHW tensor."""
    (nb, na), (hb, ha), (wb, wa), (cb, ca) = paddings
    return F.pad(x, (wb, wa, hb, ha, cb, ca, nb, na))  # F.pad lists the last axis first: W, H, C, N


def prelu(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """TFLite ``PRELU`` with per-channel slopes: x (B, C, H, W), alpha (C,) -> (B, C, H, W)."""
    return F.prelu(x, alpha)


# --------------------------------------------------------------------------------------------------
# reading the .tflite file


def model_path() -> Path:
    """The ``face_landmark.tflite`` file of the installed mediapipe wheel.

    Raises
    ------
    PixelNNError
        mediapipe is not installed (the message gives the pip command).
    """
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PixelNNError(f"the face-mesh model needs the mediapipe wheel: {INSTALL_MEDIAPIPE}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MODEL_FILE)
    if not path.is_file():
        raise PixelNNError(f"{path} is missing (later mediapipe versions do not ship it): {INSTALL_MEDIAPIPE}")
    return path


def _import_tflite():
    try:
        import tflite
    except ImportError:
        raise PixelNNError(f"reading the face-mesh model needs the tflite package: {INSTALL_TFLITE}") from None
    return tflite


def _enum_names(enum_class: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


_NUMPY_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32}


def read_tflite(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse the face-mesh ``.tflite`` into an op list and float32 constants in torch layouts.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    graph : dict
        ``{"input": name, "outputs": [landmarks name, presence name], "ops": [...]}``; each op is
        ``{"op": type, "inputs": [tensor names], "output": name}`` plus its options (``stride``,
        ``padding``, ``size``, ``paddings``). ``DEQUANTIZE`` ops are folded away.
    tensors : dict of str to Tensor
        Constants by tensor name: conv kernels (O, C, kh, kw), depthwise kernels (C, 1, kh, kw),
        biases (O,), PReLU slopes (C,); all float32.

    Raises
    ------
    PixelNNError
        tflite is not installed, or the file holds ops or options the executor does not run.
    """
    tflite = _import_tflite()
    buf = Path(path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise PixelNNError(f"{path}: expected one subgraph, found {model.SubgraphsLength()}")
    g = model.Subgraphs(0)
    op_names = _enum_names(tflite.BuiltinOperator)
    type_names = _enum_names(tflite.TensorType)
    padding_names = _enum_names(tflite.Padding)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(op_names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "UNKNOWN"))

    names = [g.Tensors(i).Name().decode() for i in range(g.TensorsLength())]
    if len(set(names)) != len(names):
        raise PixelNNError(f"{path}: tensor names are not unique")

    def constant(i: int) -> np.ndarray | None:
        t = g.Tensors(i)
        b = model.Buffers(t.Buffer())
        if b.DataLength() == 0:
            offset = b.Offset() if hasattr(b, "Offset") else 0
            if offset <= 1:
                return None  # an activation, not a constant
            raw = np.frombuffer(buf, np.uint8, count=b.Size(), offset=offset)
        else:
            raw = b.DataAsNumpy()
        kind = type_names.get(t.Type())
        if kind not in _NUMPY_TYPES:
            raise PixelNNError(f"{path}: tensor {names[i]!r} has unsupported type {kind}")
        shape = [int(s) for s in t.ShapeAsNumpy()] if t.ShapeLength() else []
        return np.frombuffer(raw.tobytes(), _NUMPY_TYPES[kind]).reshape(shape)

    raw: dict[str, np.ndarray] = {}  # constants, NHWC-style layouts
    ops: list[dict[str, Any]] = []
    for k in range(g.OperatorsLength()):
        op = g.Operators(k)
        kind = codes[op.OpcodeIndex()]
        if kind not in SUPPORTED_OPS:
            raise PixelNNError(f"{path}: op {k} is {kind}, which the face-mesh executor does not run")
        ins = [names[i] for i in op.InputsAsNumpy() if i >= 0]
        out = names[op.Outputs(0)]
        for i in op.InputsAsNumpy():
            if i >= 0 and names[i] not in raw:
                c = constant(int(i))
                if c is not None:
                    raw[names[i]] = c
        if kind == "DEQUANTIZE":
            raw[out] = raw.pop(ins[0]).astype(np.float32)  # float16 -> float32, exact
            continue
        spec: dict[str, Any] = {"op": kind, "inputs": ins, "output": out}
        opts = op.BuiltinOptions()
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D"):
            o = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
                 "MAX_POOL_2D": tflite.Pool2DOptions}[kind]()
            o.Init(opts.Bytes, opts.Pos)
            if o.StrideH() != o.StrideW():
                raise PixelNNError(f"{path}: op {k} ({kind}) has unequal strides")
            if o.FusedActivationFunction() != 0:
                raise PixelNNError(f"{path}: op {k} ({kind}) has a fused activation")
            spec["stride"] = int(o.StrideH())
            spec["padding"] = padding_names[o.Padding()]
            if kind == "MAX_POOL_2D":
                if o.FilterHeight() != o.FilterWidth():
                    raise PixelNNError(f"{path}: op {k} pools a non-square window")
                spec["size"] = int(o.FilterHeight())
            elif o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
                raise PixelNNError(f"{path}: op {k} ({kind}) is dilated")
            if kind == "DEPTHWISE_CONV_2D" and o.DepthMultiplier() != 1:
                raise PixelNNError(f"{path}: op {k} has depth multiplier {o.DepthMultiplier()}")
        elif kind == "ADD":
            o = tflite.AddOptions()
            o.Init(opts.Bytes, opts.Pos)
            if o.FusedActivationFunction() != 0:
                raise PixelNNError(f"{path}: op {k} (ADD) has a fused activation")
        elif kind == "PAD":
            spec["paddings"] = raw.pop(ins[1]).astype(int).tolist()  # (4, 2) NHWC
            spec["inputs"] = ins[:1]
        ops.append(spec)

    tensors: dict[str, torch.Tensor] = {}
    for spec in ops:  # torch layouts, by the role each constant plays
        kind, ins = spec["op"], spec["inputs"]
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = raw[ins[1]]  # CONV_2D (O, kh, kw, C); DEPTHWISE (1, kh, kw, C)
            w = w.transpose(0, 3, 1, 2) if kind == "CONV_2D" else w.transpose(3, 0, 1, 2)  # -> (O, C|1, kh, kw)
            for name, arr in ((ins[1], w), (ins[2], raw[ins[2]])):
                if name in tensors:
                    raise PixelNNError(f"{path}: constant {name!r} is shared between ops")
                tensors[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        elif kind == "PRELU":
            tensors[ins[1]] = torch.from_numpy(np.ascontiguousarray(raw[ins[1]].reshape(-1), dtype=np.float32))
    inputs = [names[i] for i in g.InputsAsNumpy()]
    outputs = [names[i] for i in g.OutputsAsNumpy()]
    if len(inputs) != 1 or len(outputs) != 2:
        raise PixelNNError(f"{path}: expected 1 input and 2 outputs, found {len(inputs)} and {len(outputs)}")
    shapes = {names[i]: [int(s) for s in g.Tensors(i).ShapeAsNumpy()] for i in g.OutputsAsNumpy()}
    outputs.sort(key=lambda n: -shapes[n][-1])  # the 1404-wide landmarks first, then the presence logit
    if [shapes[n][-1] for n in outputs] != [3 * NUM_LANDMARKS, 1]:
        raise PixelNNError(f"{path}: outputs {shapes} are not 468 landmarks and a presence score")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise PixelNNError(f"{path}: constant {name!r} holds non-finite values")
    return {"input": inputs[0], "outputs": outputs, "ops": ops}, tensors


# --------------------------------------------------------------------------------------------------
# the executor


class FaceMesh(nn.Module):
    """The face-mesh graph as a module: runs the op list in order, NCHW.

    Parameters
    ----------
    graph : dict
        From :func:`read_tflite`.
    tensors : dict of str to Tensor
        Its constants (torch layouts).
    """

    def __init__(self, graph: dict[str, Any], tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.graph = graph
        self._slot: dict[str, str] = {}  # tensor name -> buffer attribute (names hold '/' and '.')
        for i, (name, t) in enumerate(sorted(tensors.items())):
            self.register_buffer(f"c{i}", t)
            self._slot[name] = f"c{i}"
        missing = {n for op in graph["ops"] if op["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "PRELU")
                   for n in op["inputs"][1:]} - set(self._slot)
        if missing:
            raise PixelNNError(f"face-mesh weights lack {sorted(missing)[:3]}")
        # activations no op needs after op k: freed as the graph runs (a batch of 64 would otherwise hold ~1 GB)
        last: dict[str, int] = {}
        for k, op in enumerate(graph["ops"]):
            for name in op["inputs"]:
                if name not in self._slot:
                    last[name] = k
        keep = set(graph["outputs"])
        self._free_after = [[n for n, k2 in last.items() if k2 == k and n not in keep] for k in range(len(graph["ops"]))]

    def _const(self, name: str) -> torch.Tensor:
        return getattr(self, self._slot[name])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """468 landmarks and the presence logit.

        Parameters
        ----------
        x : Tensor, (B, 3, 192, 192) float32
            RGB in [0, 1].

        Returns
        -------
        landmarks : Tensor, (B, 468, 3)
            x, y, z in pixels of the 192x192 input (see the module docstring).
        logits : Tensor, (B,)
            Face presence before the sigmoid.
        """
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"face-mesh input must be (B, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(x.shape)}")
        values = {self.graph["input"]: x}
        for k, op in enumerate(self.graph["ops"]):
            kind, ins = op["op"], op["inputs"]
            a = values[ins[0]]
            if kind == "CONV_2D":
                y = conv2d_tf(a, self._const(ins[1]), self._const(ins[2]), op["stride"], op["padding"])
            elif kind == "DEPTHWISE_CONV_2D":
                y = conv2d_tf(a, self._const(ins[1]), self._const(ins[2]), op["stride"], op["padding"],
                              groups=a.shape[1])
            elif kind == "PRELU":
                y = prelu(a, self._const(ins[1]))
            elif kind == "ADD":
                y = a + values[ins[1]]
            elif kind == "MAX_POOL_2D":
                y = max_pool_tf(a, op["size"], op["stride"], op["padding"])
            elif kind == "PAD":
                y = pad_nhwc(a, op["paddings"])
            else:  # pragma: no cover - read_tflite refuses other ops
                raise PixelNNError(f"face-mesh op {kind} is not supported")
            values[op["output"]] = y
            for name in self._free_after[k]:
                del values[name]
        lm_name, score_name = self.graph["outputs"]
        landmarks = values[lm_name].reshape(len(x), NUM_LANDMARKS, 3)  # (B, 1404, 1, 1) -> (B, 468, 3)
        return landmarks, values[score_name].reshape(len(x))  # (B, 1, 1, 1) -> (B,)


# --------------------------------------------------------------------------------------------------
# the safetensors cache


def _source_tag(path: Path) -> str:
    return str(path.stat().st_size)


def facemesh_weights() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The graph and float32 weights, from the cache or converted from the wheel's ``.tflite``.

    The first call parses ``face_landmark.tflite`` (:func:`read_tflite`) and writes
    ``cache_dir()/facemesh.safetensors`` (weights, and the graph as JSON in its metadata); later
    calls read only that file. A cache of another format, made from a source file of another size,
    or unreadable, is rebuilt.

    Raises
    ------
    PixelNNError
        No valid cache and mediapipe or tflite is not installed (the message gives the pip command).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pixelnn.io import atomic_path, cache_dir, check_tensors_sha256, tensors_sha256

    cached = cache_dir() / CACHE_NAME
    try:
        src: Path | None = model_path()
    except PixelNNError:
        src = None
    if cached.is_file():
        try:
            with safe_open(str(cached), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") == CACHE_FORMAT and (src is None or meta.get("source") == _source_tag(src)):
                log.debug("loading face-mesh weights from %s", cached)
                tensors = load_file(str(cached))
                check_tensors_sha256(tensors, meta, cached, "cached face-mesh weights")  # damaged: rebuilt below
                return json.loads(meta["graph"]), tensors
            log.info("%s is stale; converting the face-mesh model again", cached)
        except Exception as exc:  # a damaged cache: rebuild it rather than fail
            log.warning("cannot read %s (%s); converting the face-mesh model again", cached, exc)
    if src is None:
        model_path()  # raises the "not installed" error
    log.info("converting face-mesh model %s -> %s", src, cached)
    graph, tensors = read_tflite(src)
    with atomic_path(cached) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT, "source": _source_tag(src),
                                               "origin": "mediapipe 0.10.21 " + "/".join(MODEL_FILE),
                                               "graph": json.dumps(graph, separators=(",", ":")),
                                               "tensors_sha256": tensors_sha256(tensors)})
    return graph, tensors


_MODELS: dict[str, FaceMesh] = {}
_LOCK = threading.Lock()


def load_facemesh(device: str | torch.device = "cpu") -> FaceMesh:
    """The face-mesh model in eval mode, loaded once per process and device.

    Parameters
    ----------
    device : str or torch.device

    Returns
    -------
    FaceMesh
        Shared between callers: do not modify it.
    """
    key = str(torch.device(device))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = FaceMesh(*facemesh_weights()).eval().to(device)
            _MODELS[key] = model
            log.debug("face mesh loaded on %s", key)
    return model


def run_facemesh(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu",
                 batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks and presence probabilities of 192x192 face crops.

    Parameters
    ----------
    images : ndarray (N, 192, 192, 3) uint8 or float32 in [0, 1], or Tensor (N, 3, 192, 192) float32 in [0, 1]
    device : str or torch.device
    batch_size : int

    Returns
    -------
    landmarks : ndarray, (N, 468, 3) float32
        In pixels of the crop (see the module docstring).
    presence : ndarray, (N,) float32
        sigmoid of the presence logit; MediaPipe keeps a face at >= :data:`PRESENCE_THRESHOLD`.
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"images must be (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))  # (N, 192, 192, 3)
        if images.dtype == np.uint8:
            x = x / 255
        x = x.permute(0, 3, 1, 2)  # (N, 3, 192, 192)
    else:
        x = images
    model = load_facemesh(device)
    landmarks, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            lm, lg = model(x[start:start + batch_size].to(device, torch.float32).contiguous())
            landmarks.append(lm.cpu())
            logits.append(lg.cpu())
    if not landmarks:
        return np.zeros((0, NUM_LANDMARKS, 3), np.float32), np.zeros(0, np.float32)
    return torch.cat(landmarks).numpy(), torch.sigmoid(torch.cat(logits)).numpy()
