"""Configuration dataclasses, serialised as JSON next to every dataset and checkpoint.

A model directory or a dataset directory can always be rebuilt from its JSON alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from pixelnn.errors import PixelNNError

TASKS = ("superres", "edges", "normals", "paired")
EDGE_METHODS = ("hed", "canny")
DIRECTIONS = ("AtoB", "BtoA")


#: Colour spaces residuals are copied in (:mod:`pixelnn.compose`).
COLORS = ("rgb", "luma")
#: The authors' windows: same pixel, 7x7, 11x11, whole image (None).
DEFAULT_WINDOWS: tuple[int | None, ...] = (1, 7, 11, None)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """A one-line PixelNNError naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise PixelNNError(f"invalid {name} {value!r}; valid: {', '.join(choices)}")


@dataclass
class TaskConfig:
    """How the input x is derived from (or paired with) a photo y.

    Attributes
    ----------
    name : {'superres', 'edges', 'normals', 'paired'}
        ``superres``: x is the photo area-downsampled by ``factor`` (96 -> 12 with the default 8).
        ``edges``: x is an edge map of the photo (HED or Canny), black strokes on white.
        ``normals``: x is the surface-normal map of the face in the photo (aligned face crops such
        as CelebA's; :mod:`pixelnn.normals`), RGB ``(n + 1) / 2``, with a face mask.
        ``paired``: x is supplied by the user (pix2pix A|B images, surface normals, ...).
    size : int
        Side of the square photos y, in pixels.
    factor : int
        Downsampling factor for ``superres``.
    edge_method : {'hed', 'canny'}
        Edge detector for ``edges``.
    hed_scale : float
        HED runs on the photo enlarged this many times (sharper contours on small photos; 2 costs
        about 3.5x the time of 1).
    direction : {'AtoB', 'BtoA'}
        For ``paired`` pix2pix images: AtoB means the left half A is the input and B the photo.
    input_channels : int
        Channels of x: 3 for superres, normal maps and colour paired inputs, 1 for edge maps.
    """

    name: str = "superres"
    size: int = 96
    factor: int = 8
    edge_method: str = "hed"
    hed_scale: float = 2.0
    direction: str = "AtoB"
    input_channels: int = 3

    def __post_init__(self) -> None:
        check_choice("task", self.name, TASKS)
        check_choice("edge method", self.edge_method, EDGE_METHODS)
        check_choice("direction", self.direction, DIRECTIONS)
        if self.size < 16:
            raise PixelNNError(f"size must be at least 16, got {self.size}")
        if self.name == "superres" and (self.factor < 1 or self.size % self.factor):
            raise PixelNNError(f"superres factor {self.factor} must divide size {self.size}")
        if self.name == "edges":
            self.input_channels = 1
        if self.name == "normals":
            self.input_channels = 3

    @property
    def input_size(self) -> int:
        """Side of the input x in pixels."""
        return self.size // self.factor if self.name == "superres" else self.size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class RegressorConfig:
    """Architecture of the stage-1 regressor (see :mod:`pixelnn.models.regressor`)."""

    in_channels: int = 3
    out_channels: int = 3
    size: int = 96
    input_size: int = 12
    base_channels: int = 16
    depth: int = 4  # number of 2x downsamplings in the U-Net encoder (96 -> 6)
    norm: str = "batch"  # batch | group | none
    residual_upsample: bool = True  # predict a residual over the bicubically upsampled input (3-channel inputs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RegressorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: Default VGG-16 layers of the perceptual loss (cheap, low- and mid-level: 96x96 -> 24x24 at relu3_3).
PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3")

#: What a training time budget counts: wall-clock time, or this process's CPU time (fair when the
#: machine is shared: other programs' load does not eat the budget).
CLOCKS = ("wall", "cpu")


def check_clock(clock: str) -> None:
    if clock not in CLOCKS:
        from pixelnn.errors import PixelNNError

        raise PixelNNError(f"invalid clock {clock!r}; valid: {', '.join(CLOCKS)}")


@dataclass
class TrainConfig:
    """Optimisation settings for ``pixelnn train``."""

    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-5  # the ||w||^2 term of eq. 1
    max_steps: int = 100_000
    minutes: float | None = None
    clock: str = "wall"  # what `minutes` counts: "wall" time, or "cpu" time of this process (all threads)
    val_every: int = 500
    sample_every: int = 1000
    seed: int = 0
    num_threads: int | None = None
    augment_flip: bool = True
    # Loss = MSE + perceptual_weight * sum over perceptual_layers of the MSE of frozen ImageNet VGG-16
    # activations of f(x) and y; 0 is the paper's pure L2 (eq. 1) and skips VGG entirely.
    perceptual_weight: float = 0.0
    perceptual_layers: tuple[str, ...] = PERCEPTUAL_LAYERS
    # A model folder or regressor.safetensors whose weights (and architecture) start the training;
    # ignored when MODEL_DIR holds its own checkpoint to resume from.
    init_from: str | None = None
    # Where the models and batches live: "auto", "cpu", "cuda", "cuda:N" or "mps" (pixelnn.devices);
    # checked when training starts (a config written on a GPU machine still loads elsewhere).
    device: str = "auto"

    def __post_init__(self) -> None:
        check_clock(self.clock)
        if not self.perceptual_weight >= 0:  # also refuses NaN
            raise PixelNNError(f"perceptual weight must be >= 0, got {self.perceptual_weight}")
        if isinstance(self.perceptual_layers, str):
            self.perceptual_layers = tuple(n.strip() for n in self.perceptual_layers.split(",") if n.strip())
        self.perceptual_layers = tuple(self.perceptual_layers)  # a JSON list back to a tuple
        if not self.perceptual_layers:
            raise PixelNNError("perceptual layers must name at least one VGG-16 layer, e.g. relu2_2")
        if self.init_from is not None:
            self.init_from = str(self.init_from)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ModelFiles:
    """File names inside a MODEL_DIR."""

    weights: str = "regressor.safetensors"
    config: str = "config.json"
    state: str = "train_state.safetensors"
    log: str = "train_log.jsonl"
    samples: str = "samples"
    extra: dict[str, str] = field(default_factory=dict)


MODEL_FILES = ModelFiles()
