"""Configuration dataclasses, serialised as JSON next to every dataset and checkpoint.

A model directory or a dataset directory can always be rebuilt from its JSON alone.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
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


#: Largest photo side a task may ask for (a 4096 x 4096 photo is 48 MiB; the paper's are 96 or 128).
MAX_SIZE = 4096
#: Largest enlargement HED may run at (its cost grows with the square of the scale).
MAX_HED_SCALE = 8.0
#: Largest side, photo side x ``hed_scale``, of the image HED runs on when ``prepare`` derives edge maps:
#: HED needs about 700 bytes per pixel of it (measured: 0.74 GB at 1024 x 1024), so one image of this side
#: costs about 3 GB (:func:`pixelnn.edges.hed_probability` batches up to :data:`pixelnn.edges.HED_BATCH_PIXELS`).
MAX_HED_SIDE = 2048


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """A one-line PixelNNError naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise PixelNNError(f"invalid {name} {value!r}; valid: {', '.join(choices)}")


def _bound(v: float) -> str:
    """A bound as the message shows it: 95, 0.5, or 2**63 - 1 (not its 19 digits)."""
    if isinstance(v, int) and v >= 2**31 and (v + 1) & v == 0:
        return f"2**{v.bit_length()} - 1"
    return str(int(v)) if float(v).is_integer() else repr(v)


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, integer: bool = False,
                 odd: bool = False, above: bool = False) -> Any:
    """``value`` as a finite int or float within bounds, else a one-line PixelNNError naming ``name``.

    Parameters
    ----------
    name : str
        What the message calls the value: a field (``vote_size``) or a flag (``--vote-size``).
    value : number
        A bool, a string, NaN or an infinity is refused; with ``integer`` a whole float (3.0, from JSON)
        becomes an int.
    lo, hi : float, optional
        Inclusive bounds (``lo`` exclusive with ``above``: ``> 0``); None: unbounded.
    integer, odd : bool
        Require a whole number, an odd one.

    Returns
    -------
    int or float
        The value (an int when ``integer``).

    Raises
    ------
    PixelNNError
        E.g. ``--vote-size must be an odd integer between 1 and 95, got 1001``.
    """
    kind = "an odd integer" if odd else "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        want = f"> {_bound(lo)} and <= {_bound(hi)}" if above else f"between {_bound(lo)} and {_bound(hi)}"
    elif lo is not None:
        want = f"{'>' if above else '>='} {_bound(lo)}"
    else:
        want = f"<= {_bound(hi)}" if hi is not None else ""
    bad = PixelNNError(f"{name} must be {kind} {want}, got {value!r}" if want else
                       f"{name} must be a finite {kind.split()[-1]}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise bad
    if integer or odd:
        if not float(value).is_integer():
            raise bad
        value = int(value)
    if (lo is not None and (value <= lo if above else value < lo)) or (hi is not None and value > hi) \
            or (odd and value % 2 == 0):
        raise bad
    return value


#: Mixed precision of a network's forward pass (stage-1 training: its forward pass and loss, the weights and the
#: optimizer stay fp32; HED: the network, its pre- and post-processing stay fp32). ``auto``: bf16 where native.
AUTOCASTS = ("auto", "off", "bf16")
#: What a task written before a field existed meant by it (HED ran in float32).
TASK_LEGACY = {"hed_autocast": "off"}


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
    hed_autocast : {'auto', 'off', 'bf16'}
        Precision of HED's network wherever the task runs it (``prepare``, ranking, ``evaluate``, a photo
        turned into an edge map): ``bf16`` under ``torch.autocast`` (2x faster where bfloat16 is native;
        0.4% of the edge pixels at scale 2 lie more than a pixel from float32's), ``off`` float32, ``auto`` (the default of new datasets)
        bf16 exactly where the machine computes it natively. A task written before the field existed
        reads as ``off`` (:data:`TASK_LEGACY`).
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
    hed_autocast: str = "auto"

    def __post_init__(self) -> None:
        check_choice("task", self.name, TASKS)
        check_choice("edge method", self.edge_method, EDGE_METHODS)
        check_choice("direction", self.direction, DIRECTIONS)
        self.size = check_number("size", self.size, 16, MAX_SIZE, integer=True)
        self.factor = check_number("factor", self.factor, 1, self.size, integer=True)
        if self.name == "superres" and self.size % self.factor:
            raise PixelNNError(f"superres factor {self.factor} must divide size {self.size}")
        self.hed_scale = check_number("hed scale", self.hed_scale, 0, MAX_HED_SCALE, above=True)
        check_choice("hed autocast", self.hed_autocast, AUTOCASTS)
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
        """A task read back from JSON; a field missing from it (written before the field existed) takes its
        old meaning (:data:`TASK_LEGACY`), not today's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**TASK_LEGACY, **{k: v for k, v in d.items() if k in known}})


#: Normalisations of the regressor's blocks.
NORMS = ("batch", "group", "none")
#: Bounds of the regressor's architecture (a U-Net of 1024 channels at full resolution is already ~1e9 weights).
MAX_BASE_CHANNELS = 1024
MAX_DEPTH = 12


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

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        self.base_channels = check_number("base channels", self.base_channels, 1, MAX_BASE_CHANNELS, integer=True)
        self.depth = check_number("depth", self.depth, 0, MAX_DEPTH, integer=True)

    @property
    def max_depth(self) -> int:
        """The most downsamplings ``size`` allows: each level halves the grid, down to 1 x 1."""
        return min(max(int(self.size).bit_length() - 1, 0), MAX_DEPTH)

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


#: Learning-rate schedules of stage-1 training, over the fraction of the budget used (steps or minutes,
#: whichever is further along; with ``--clock cpu`` the fraction of CPU time): ``cosine`` (the original
#: one: linear warm-up over 2%, then cosine decay to 5% of the rate), ``constant`` (the rate throughout),
#: ``onecycle`` (warm-up from 4% of the rate over 30%, then cosine decay to ~0, as torch's OneCycleLR).
LR_SCHEDULES = ("cosine", "constant", "onecycle")
#: What a training config that predates a field meant by it: old configs keep their behaviour whatever
#: the defaults of new trainings become.
TRAIN_LEGACY = {"channels_last": False, "autocast": "off", "compile": False, "lr_schedule": "cosine"}


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (JSON true/false), else a one-line PixelNNError naming ``name``."""
    if not isinstance(value, bool):
        raise PixelNNError(f"{name} must be true or false, got {value!r}")
    return value


#: Bounds of a training's settings: a batch of 65536 photos or a learning rate above 1 is a typo.
MAX_BATCH_SIZE = 65536
MAX_LR = 1.0
#: Seeds are non-negative and fit numpy's and torch's generators (64 bits).
MAX_SEED = 2**63 - 1
#: Most torch CPU threads (``--threads``): OpenMP cannot create 20000 threads and torch crashes (a segfault)
#: on 100000; 1024 still runs.
MAX_THREADS = 1024


def check_train_budget(config: Any) -> None:
    """Check (and normalise) the settings :class:`TrainConfig` and the pix2pix config share.

    ``batch_size``, ``val_every`` >= 1; ``max_steps`` >= 0 (0: the start is saved as is, e.g. an
    ``init_from`` model); ``sample_every`` >= 0 (0: no sample grids);
    ``minutes`` None or > 0; ``seed`` in [0, 2**63 - 1]; ``num_threads`` None or 1 to 1024. A one-line
    PixelNNError names the first bad one.
    """
    config.batch_size = check_number("batch size", config.batch_size, 1, MAX_BATCH_SIZE, integer=True)
    config.max_steps = check_number("max steps", config.max_steps, 0, integer=True)  # 0: save the start as is
    config.val_every = check_number("val every", config.val_every, 1, integer=True)
    config.sample_every = check_number("sample every", config.sample_every, 0, integer=True)
    if config.minutes is not None:
        config.minutes = check_number("minutes", config.minutes, 0, above=True)
    config.seed = check_number("seed", config.seed, 0, MAX_SEED, integer=True)
    if config.num_threads is not None:
        config.num_threads = check_number("threads", config.num_threads, 1, MAX_THREADS, integer=True)


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
    # Speed levers (issue 16 part 5; docs/results.md). channels_last: the regressor and its batches in
    # torch.channels_last; autocast: "bf16" runs the forward pass and loss under torch.autocast in bfloat16
    # (optimizer and weights fp32), "auto" (the default) does so where the device has native bf16
    # (pixelnn.devices.native_bf16) and is "off" elsewhere; compile: torch.compile the regressor for the training steps (a warning
    # and eager training where compiling fails); lr_schedule: one of LR_SCHEDULES.
    channels_last: bool = False
    autocast: str = "auto"
    compile: bool = False
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        check_clock(self.clock)
        check_train_budget(self)
        self.channels_last = check_bool("channels_last", self.channels_last)
        self.compile = check_bool("compile", self.compile)
        check_choice("autocast", self.autocast, AUTOCASTS)
        check_choice("lr schedule", self.lr_schedule, LR_SCHEDULES)
        self.lr = check_number("learning rate", self.lr, 0, MAX_LR, above=True)
        self.weight_decay = check_number("weight decay", self.weight_decay, 0)
        self.perceptual_weight = check_number("perceptual weight", self.perceptual_weight, 0)
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
        """The config a ``config.json``'s ``train`` record describes; a field it lacks (written before the
        field existed) takes its old meaning (:data:`TRAIN_LEGACY`), not today's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**TRAIN_LEGACY, **{k: v for k, v in d.items() if k in known}})


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
