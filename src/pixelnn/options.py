"""One object for every synthesis setting: :class:`SynthesisOptions`.

The CLI (``pixelnn synthesize``, ``evaluate``), the web app's Options panel, the pipeline, the saved
``manifest.json`` and the benchmarks all speak it, so a setting has one name in every layer::

    >>> from pixelnn.options import SynthesisOptions
    >>> o = SynthesisOptions(mode="coherent", where={"Category": ["Boots"]})
    >>> o.resolved().vote_size            # the mode's default, applied in one place
    3
    >>> SynthesisOptions.from_dict(o.to_dict()) == o
    True

Fields left ``None`` take the composition mode's defaults (:meth:`SynthesisOptions.resolved`, from
:mod:`pixelnn.modes`); a result records the resolved options, and feeding them back in
(``pixelnn synthesize --options OUT/<stem>/manifest.json``) reproduces its outputs bit for bit.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pixelnn.config import AUTOCASTS, COLORS, DEFAULT_WINDOWS, MAX_SEED, check_choice, check_number
from pixelnn.errors import PixelNNError

# pixelnn.modes and pixelnn.matching are imported where used: they load torch (~2 s), and this module must stay
# importable without it (the CLI builds its parser from COLORS and DESCRIPTORS before any command runs).

#: The authors' K: their 18 exemplar sets use the 11 nearest exemplars.
DEFAULT_TOP_K = 11
#: The default composition mode (issue 16, part 3: measured in docs/results.md against eq. 3, ``matched``).
DEFAULT_MODE = "coherent"
DEFAULT_DESCRIPTOR = "hypercolumn"
DEFAULT_PCA_DIMS = 64
#: Pixel descriptors, by name (:func:`pixelnn.descriptors.make_descriptor`).
DESCRIPTORS = ("hypercolumn", "regressor")
#: Pixel searches (``search``): ``exact`` labels every pixel; ``coarse`` (approximate, issue 17) labels a
#: half-resolution grid of query pixels and gives each pixel its grid pixel's (exemplar, offset) label.
SEARCHES = ("exact", "coarse")
#: Output orders (``order``): best score first (:mod:`pixelnn.ranking`), or the grid (sets x windows, set-major).
ORDERS = ("score", "grid")
#: "Like these photos" keeps this many nearest exemplars per photo.
DEFAULT_LIKE_K = 50
#: With regions: the colour step at a border is spread over about this many pixels on either side.
DEFAULT_REGION_BLEND = 4.0
#: Fields a composition mode gives defaults for (None in the options = the mode's value).
MODE_FIELDS = ("patch_size", "vote_size", "highpass_sigma", "chroma_weight")
#: Most neighbours a search may ask for (each one's pixel descriptors are computed and held).
MAX_TOP_K = 10_000
#: The optional numeric fields: (low, high, check_number's keywords); None leaves a field to its default.
#: Sizes an output cannot take are refused by :meth:`SynthesisOptions.check_size`.
NUMBER_BOUNDS: dict[str, tuple[float | None, float | None, dict[str, bool]]] = {
    "patch_size": (1, None, {"odd": True}),
    "vote_size": (1, None, {"odd": True}),
    "highpass_sigma": (0, None, {}),
    "chroma_weight": (0, 1, {}),
    "pca_dims": (0, None, {"integer": True}),  # 0: the full descriptor
    "num_outputs": (1, None, {"integer": True}),
    "region_blend": (0, 10000, {}),  # pixels; 0: the bare copies
    "seam_blend": (0, 10000, {}),  # pixels; 0: no fusion
    "input_weight": (0, 1, {}),  # share of the input's own similarity in global retrieval
    "rerank_k": (1, MAX_TOP_K, {"integer": True}),
    "diversity_weight": (0, 1, {}),  # share of the redundancy penalty in choosing the top_k among the candidates
}
OPTIONS_FORMAT = "pixelnn-synthesis-options"
#: Prefix of a mask given inline (not as a file): ``packbits:<H>x<W>:<base64 of numpy.packbits(mask)>``.
INLINE_MASK = "packbits:"
#: The exemplar filters a region's set may use (any of them; they intersect, as the top-level ones do).
REGION_FILTERS = ("where", "exemplars", "like")


def _window(w: Any) -> int | None:
    """A window side (an int, or its digits as text) or None for ``"whole"``; a one-line PixelNNError otherwise."""
    if w is None or w == "whole":
        return None
    given = repr(w)[:30] + "..." if len(repr(w)) > 40 else repr(w)
    if isinstance(w, str) and w.strip().isdecimal() and len(w.strip()) <= 18:
        w = int(w)
        given = repr(w)
    elif isinstance(w, str) and w.strip().isdecimal():
        w = math.inf  # int() refuses over 4300 digits; both are too big
    if isinstance(w, int) and not isinstance(w, bool) and w > 2**62:
        w = math.inf  # float(w) of a huge int overflows
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w != int(w) or w < 1:
        raise PixelNNError(f"invalid window {given}; a window is a whole side >= 1 or 'whole'")
    return int(w)


def _items(name: str, v: Any) -> tuple:
    """A list field: None -> (), one string or path -> (it,), a list or tuple -> a tuple; else a one-line error."""
    if v is None:
        return ()
    if isinstance(v, (str, Path)):
        return (v,)
    if isinstance(v, (list, tuple)):
        return tuple(v)
    raise PixelNNError(f"{name} must be a list, got {v!r}")


def _where(where: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not where:
        return ()
    items = where.items() if isinstance(where, Mapping) else where
    out = []
    for item in items:
        try:
            key, values = item
        except (TypeError, ValueError):
            raise PixelNNError(f"where must map label keys to values, got {where!r}") from None
        values = tuple(str(v) for v in _items(f"the values of label {key!r}", values))
        if not values:
            raise PixelNNError(f"no values given for label {key!r}")
        out.append((str(key), values))
    return tuple(out)


def _text_items(name: str, text: str, separators: str, example: str, nothing: str) -> list[str]:
    """The items of a comma list (split at the regular expression ``separators``); a one-line PixelNNError
    when it has none (``nothing`` says so) or an empty one (``1,,7``)."""
    text = str(text).strip()
    items = [item.strip() for item in re.split(separators, text)]
    if not any(items):
        raise PixelNNError(nothing)
    if "" in items:
        raise PixelNNError(f"invalid {name} {text!r}: an empty item between commas; e.g. {example}")
    return items


def parse_windows(text: str) -> tuple[str, ...]:
    """``"1, 7x7, 11 whole"`` -> ``("1", "7", "11", "whole")``, the items SynthesisOptions' ``windows`` checks;
    the text form of the CLI's ``--windows`` and the web app's Windows field. Items are separated by commas,
    semicolons or spaces; an empty item (``1,,7``) or a bad one (``1.5``, ``0``, once checked) raises a
    one-line PixelNNError."""
    out = []
    for item in _text_items("windows", text, r"\s*[,;]\s*|\s+", "1,7,11,whole",
                            "windows must name at least one window (a side >= 1 or 'whole')"):
        item = item.lower()
        side, x, other = item.partition("x")
        out.append(side if x and side == other else item)  # 7x7 -> 7
    return tuple(out)


def parse_sets(text: str) -> tuple[tuple[int, ...], ...]:
    """``"1,2,1-3,1+4"`` -> ``((1,), (2,), (1, 2, 3), (1, 4))``: comma-separated exemplar sets of 1-based
    neighbour ranks, each a rank, a range ``a-b`` (ranks a to b) or members joined by ``+`` (``1-3+7``).

    Raises
    ------
    PixelNNError
        One line, for an empty item (``1,,7``), a rank that is not a whole number from 1 to
        :data:`MAX_TOP_K` (``0``, ``1.5``, ``-``) or a range that goes down (``3-1``, ``1--2``).
    """
    sets = []
    for item in _text_items("sets", str(text).replace(" ", ""), r"[,;]", "1,2,1-3,1-5",
                            "no exemplar sets given; leave the field empty for the authors' 18"):
        ranks: dict[int, None] = {}  # ordered, without repeats
        for part in item.lstrip("#").split("+"):
            lo, dash, hi = part.partition("-")
            if not lo.isdecimal() or not (hi if dash else lo).isdecimal():
                raise PixelNNError(f"invalid exemplar set {item!r}: use 1-based ranks, ranges like 1-3 or "
                                   f"members like 1+4, e.g. 1,2,1-3,1-5")
            # a rank of thousands of digits is out of range too (int() refuses strings of over 4300 digits)
            lo_i, hi_i = (int(v) if len(v) <= 18 else MAX_TOP_K + 1 for v in (lo, hi if dash else lo))
            if not 1 <= lo_i <= hi_i <= MAX_TOP_K:
                raise PixelNNError(f"invalid exemplar set {item!r}: 1-based ranks go from 1 to {MAX_TOP_K} and "
                                   f"ranges go up (1-3)")
            ranks.update(dict.fromkeys(range(lo_i, hi_i + 1)))
        sets.append(tuple(ranks))
    return tuple(sets)


def encode_mask(mask: Any) -> str:
    """An (H, W) mask (bool, or numbers: nonzero = inside) as the inline text of :class:`Region`'s ``mask``.

    Returns
    -------
    str
        ``packbits:<H>x<W>:<base64>``, the row-major bits of the mask (:func:`decode_mask` inverts it).
    """
    a = np.asarray(mask)
    if a.ndim != 2 or a.size == 0 or not (a.dtype == bool or np.issubdtype(a.dtype, np.number)):
        raise PixelNNError(f"a region mask must be an (S, S) bool array or a PNG path, got an array of shape "
                           f"{a.shape} and dtype {a.dtype}")
    bits = base64.b64encode(np.packbits(a.astype(bool).ravel()).tobytes()).decode("ascii")
    return f"{INLINE_MASK}{a.shape[0]}x{a.shape[1]}:{bits}"


def decode_mask(text: str) -> np.ndarray:
    """The (H, W) bool mask of an inline mask text (:func:`encode_mask`); a one-line PixelNNError if malformed."""
    try:
        shape, _, bits = text[len(INLINE_MASK):].partition(":")
        h, w = (int(v) for v in shape.split("x"))
        flat = np.unpackbits(np.frombuffer(base64.b64decode(bits, validate=True), np.uint8))
        if h < 1 or w < 1 or len(flat) < h * w:
            raise ValueError
        return flat[:h * w].reshape(h, w).astype(bool)
    except (ValueError, TypeError):
        raise PixelNNError(f"invalid inline region mask {text[:40]!r}...; expected packbits:<H>x<W>:<base64>") from None


def mask_sha256(mask: np.ndarray) -> str:
    """sha256 of a bool mask's shape and row-major bits (what the manifest records of each region)."""
    a = np.asarray(mask, bool)
    return hashlib.sha256(f"{a.shape[0]}x{a.shape[1]}:".encode() + np.packbits(a.ravel()).tobytes()).hexdigest()


@dataclass(frozen=True)
class Region:
    """One region of an output: a mask and the exemplar set its pixels are matched against.

    Attributes
    ----------
    mask : str
        A PNG file (read by the pipeline: nonzero in any channel = inside; it must be S x S, the
        output size) or the mask itself inline (``packbits:...``, :func:`encode_mask`). An (S, S)
        bool array is accepted and stored inline.
    where : tuple of (key, values)
        The region's label filter (as :attr:`SynthesisOptions.where`; a dict is accepted).
    exemplars : tuple of str
        Only these exemplar ids.
    like : tuple of str
        Only exemplars that look like these photos (the options' ``like_k`` nearest per photo).
    source : str, optional
        The file the mask was read from (set when the pipeline resolves a file mask to inline bits).

    A region's set is its own filters alone (they intersect each other, not the top-level
    ``where`` / ``exemplars`` / ``like``, which define the default set); at least one is needed.
    """

    mask: str
    where: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())
    exemplars: tuple[str, ...] = ()
    like: tuple[str, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if isinstance(self.mask, np.ndarray):
            set_("mask", encode_mask(self.mask))
        elif isinstance(self.mask, Path):
            set_("mask", str(self.mask))
        if not isinstance(self.mask, str) or not self.mask:
            raise PixelNNError(f"a region mask must be an (S, S) bool array or a PNG path, got {self.mask!r}")
        if self.inline:
            decode_mask(self.mask)  # fail early on a malformed one
        set_("where", _where(self.where))
        set_("exemplars", tuple(str(e) for e in _items("a region's exemplars", self.exemplars)))
        set_("like", tuple(str(p) for p in _items("a region's like", self.like)))
        if self.source is not None:
            set_("source", str(self.source))
        if not (self.where or self.exemplars or self.like):
            raise PixelNNError(f"region {self.describe()} has no exemplar set; give it one of: "
                               f"{', '.join(REGION_FILTERS)}")

    @property
    def inline(self) -> bool:
        """Whether the mask is given inline (not as a file)."""
        return self.mask.startswith(INLINE_MASK)

    @property
    def where_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.where}

    def describe(self) -> str:
        """A short name for messages: the mask file (or ``inline HxW``) and the filters."""
        name = (self.source or f"inline {self.mask[len(INLINE_MASK):].partition(':')[0]}") if self.inline else self.mask
        parts = [f"{k}={'|'.join(v)}" for k, v in self.where]
        parts += [f"exemplars={','.join(self.exemplars)}"] if self.exemplars else []
        parts += [f"like={','.join(self.like)}"] if self.like else []
        return f"{name}:{';'.join(parts)}" if parts else name

    def to_dict(self) -> dict[str, Any]:
        return {"mask": self.mask, "where": self.where_dict, "exemplars": list(self.exemplars),
                "like": list(self.like), "source": self.source}

    @classmethod
    def from_any(cls, r: Any) -> "Region":
        """A Region from a Region, a dict (:meth:`to_dict`'s keys) or a pair ``(mask, exemplar set)`` whose set
        is a dict of filters, e.g. ``(mask, {"where": {"Subcategory": ["Sneakers"]}})`` or
        ``("eye.png", {"exemplars": ["shoe-1"]})``."""
        if isinstance(r, Region):
            return r
        if isinstance(r, Mapping):
            d = dict(r)
        elif isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[1], Mapping):
            d = {"mask": r[0], **r[1]}
        else:
            raise PixelNNError(f"a region must be a (mask, exemplar set) pair, a dict or a Region, got {r!r}")
        unknown = [k for k in d if k not in ("mask", "source", *REGION_FILTERS)]
        if unknown or "mask" not in d:
            raise PixelNNError(f"a region takes a mask and filters; unknown key(s) {', '.join(map(str, unknown))}"
                               f"; valid: mask, {', '.join(REGION_FILTERS)}" if unknown else
                               f"a region needs a mask, got {r!r}")
        return cls(**d)


@dataclass(frozen=True)
class SynthesisOptions:
    """Every setting of one synthesis (stage 2), frozen and JSON round-trippable.

    Attributes
    ----------
    top_k : int
        K, the global neighbours retrieved (the default sets need 11).
    sets : tuple of tuple of int, optional
        Exemplar sets as 1-based neighbour ranks (rank 1 = the nearest), e.g. ``((1,), (1, 2, 3))``;
        None = the authors' 18 sets (:func:`pixelnn.matching.default_exemplar_sets`).
    windows : tuple of int or None
        Window sides; None = the whole image. Outputs are ``sets x windows``, set-major.
    mode : str
        Composition mode, one of :func:`pixelnn.modes.mode_names`: ``coherent`` (default: eq. 3's copy with
        coherent matches, so that pieces of one exemplar are copied whole, few and faint seams) or ``matched``
        (paper eq. 3, every pixel its own best match), ``global`` (eq. 2), ``authors``.
    color : {'rgb', 'luma'}
        Copy residuals in RGB, or in luminance only.
    patch_size : int, optional
        ``coherent``: odd side of the patch similarity. None: the mode's default.
    vote_size : int, optional
        Odd side of the patch vote of composition. None: the mode's default.
    highpass_sigma : float, optional
        Copy only the residual minus its Gaussian blur of this std (pixels). None: the mode's default.
    chroma_weight : float, optional
        Share of an exemplar's colour cast copied, in [0, 1]. None: the mode's default for the task
        (``CompositionMode.task_defaults``: coherent edges 0.8, since an edge map has no colour).
    descriptor : {'hypercolumn', 'regressor'}, optional
        Pixel descriptor; None: the pipeline's (``PixelNNPipeline.from_model_dir(descriptor=...)``,
        by default ``hypercolumn``).
    pca_dims : int, optional
        PCA dims of the pixel descriptor, 0 = the full descriptor; None: the pipeline's (by default 64).
    num_outputs : int, optional
        Keep a random subset of this many outputs (drawn with ``seed``); None = all.
    seed : int
        Seed of that subset.
    where : tuple of (key, values)
        Only exemplars with these labels: AND across keys, OR within a key's values. A dict is
        accepted, e.g. ``{"Category": ["Boots"]}``.
    exemplars : tuple of str
        Only these exemplar ids.
    like : tuple of str
        Only exemplars that look like these photos (file paths); ``like_k`` nearest per photo.
    like_k : int
    regions : tuple of Region
        Region-level control: each :class:`Region` is a mask and an exemplar set (its own ``where``,
        ``exemplars`` and ``like``). A pair ``(mask, {"where": ...})`` or a dict is accepted. Pixels
        inside a region are matched only against that set's own K nearest exemplars (global
        retrieval within the set, then windowed matching); pixels outside every region use the
        default set (the top-level filters). Overlaps: the later region wins, like layers painted in
        order. Empty (default): the whole image uses the default set, exactly as without regions.
        See docs/synthesis.md.
    seam_blend : float
        ``matched`` and ``coherent``: gradient-domain fusion of the copied pieces at every seam over
        about this many pixels (:func:`pixelnn.compose.fuse_seams`; every pixel keeps its source);
        0 (default): the copies as they are.
    region_blend : float
        With regions: the colour step where two sets meet is spread over about this many pixels on
        either side (:func:`pixelnn.compose.blend_borders`, Poisson blending of the low frequencies;
        every pixel keeps its source); 0 = none, the bare copies.
    back_projection : bool, optional
        Superres: shift every output's ``factor`` x ``factor`` blocks so that its area downsampling equals
        the input thumbnail exactly (:func:`pixelnn.compose.back_project`; the copied high frequencies stay).
        None: the task's default (on for superres, measured to bring every output closer to the photo;
        docs/results.md). Other tasks have no thumbnail to project on: the pipeline records False.
    input_weight : float, optional
        Input-aware retrieval: the global neighbours are ranked by ``(1 - w) * sim(f(x), f(x_n)) +
        w * sim(x, x_n)``, the second term comparing the input itself with the exemplars' inputs
        (:func:`pixelnn.retrieval.input_descriptors`), among the ``rerank_k`` nearest by f(x). 0: f(x) alone
        (the paper). None: the task's default (:data:`pixelnn.retrieval.DEFAULT_INPUT_WEIGHT`).
    rerank_k : int, optional
        Candidates re-ranked by the input similarity (``input_weight`` > 0) or picked from for diversity
        (``diversity_weight`` > 0); None: ``max(4 * top_k, 64)``.
    diversity_weight : float
        Diverse neighbours: the ``top_k`` are picked from the ``rerank_k`` candidates by greedy maximal
        marginal relevance, each next one maximising ``(1 - d) * relevance - d * (its largest similarity to
        those already picked)``, the similarity of two exemplars being the cosine of their global descriptors
        (conv5 of f(x_n); :func:`pixelnn.retrieval.diverse_subset`). The
        nearest exemplar is always the first. 0 (default, measured not to raise the outputs' diversity):
        the nearest ``top_k`` (the paper).
    search : {'exact', 'coarse'}, optional
        How matches are searched. ``exact``: every pixel's own label (``coherent``) or best match. ``coarse``
        (``coherent`` only; approximate): the labels are found on a half-resolution grid of query pixels, with
        full-resolution offsets and a patch of every other pixel, and each pixel takes its grid pixel's label
        (:func:`pixelnn.matching.coherent_matches` ``stride=2``), 2.4x faster matching at the same match
        similarity and LPIPS (docs/results.md). None: the mode's default (``CompositionMode.searches[0]``:
        ``coarse`` for ``coherent``, ``exact`` for the others).
    order : {'score', 'grid'}
        ``score`` (default): the outputs best first, by their faithfulness to the input re-derived from each
        output plus their mean match similarity (:func:`pixelnn.ranking.rank_scores`; a stable sort, ties
        keep the grid order, unscored outputs go last). ``grid``: the authors' order, sets x windows, set-major, with no scores computed. Either way
        the result records every output's grid position (``SynthesisResult.grid_index``).
    autocast : {'auto', 'off', 'bf16'}
        Precision of the pixel descriptors' network pass (VGG-16 over f(x) and the neighbours' f(x_k);
        issue 17): ``bf16`` under ``torch.autocast`` in bfloat16, the layer maps then combined and
        projected in float32; ``off`` float32. ``auto`` (default): bf16 exactly where the device computes
        bfloat16 natively (:func:`pixelnn.devices.resolve_autocast`; AVX512-BF16/AMX CPUs, Ampere+ GPUs),
        where it halves the VGG pass at the same LPIPS (docs/results.md). Stage 1, the global retrieval
        descriptors and the correspondences' composition stay float32. The pipeline resolves it
        (:meth:`pixelnn.pipeline.PixelNNPipeline.check_options`), so a manifest records what ran.
    """

    top_k: int = DEFAULT_TOP_K
    sets: tuple[tuple[int, ...], ...] | None = None
    windows: tuple[int | None, ...] = DEFAULT_WINDOWS
    mode: str = DEFAULT_MODE
    color: str = "rgb"
    patch_size: int | None = None
    vote_size: int | None = None
    highpass_sigma: float | None = None
    chroma_weight: float | None = None
    descriptor: str | None = None
    pca_dims: int | None = None
    num_outputs: int | None = None
    seed: int = 0
    where: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())
    exemplars: tuple[str, ...] = ()
    like: tuple[str, ...] = ()
    like_k: int = DEFAULT_LIKE_K
    regions: tuple[Region, ...] = ()
    region_blend: float = DEFAULT_REGION_BLEND
    seam_blend: float = 0.0
    back_projection: bool | None = None
    input_weight: float | None = None
    rerank_k: int | None = None
    diversity_weight: float = 0.0
    search: str | None = None
    order: str = "score"
    autocast: str = "auto"

    def __post_init__(self) -> None:
        from pixelnn.modes import mode_names

        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        check_choice("composition mode", self.mode, mode_names())
        check_choice("color", self.color, COLORS)
        check_choice("order", self.order, ORDERS)
        check_choice("autocast", self.autocast, AUTOCASTS)
        if self.search is not None:
            check_choice("search", self.search, SEARCHES)
        if self.descriptor is not None:
            check_choice("descriptor", self.descriptor, DESCRIPTORS)
        for name in ("top_k", "like_k"):
            set_(name, check_number(name, getattr(self, name), 1, MAX_TOP_K, integer=True))
        set_("seed", check_number("seed", self.seed, 0, MAX_SEED, integer=True))
        windows = _items("windows", self.windows)
        if not windows:
            raise PixelNNError("windows must name at least one window (a side >= 1 or 'whole')")
        set_("windows", tuple(_window(w) for w in windows))
        if self.sets is not None:
            sets = tuple(tuple(check_number("a set's 1-based rank", r, 1, MAX_TOP_K, integer=True) for r in _items("a set", s))
                         for s in _items("sets", self.sets))
            if not sets or any(not s or min(s) < 1 for s in sets):
                raise PixelNNError(f"sets must be non-empty lists of 1-based ranks (>= 1), got {self.sets!r}")
            set_("sets", sets)
        for name, bounds in NUMBER_BOUNDS.items():  # None: the mode's (or the pipeline's) default
            if getattr(self, name) is not None:  # a whole float from JSON (3.0) becomes an int
                set_(name, check_number(name, getattr(self, name), *bounds[:2], **bounds[2]))
        set_("region_blend", float(self.region_blend))
        set_("seam_blend", float(self.seam_blend))
        if self.back_projection is not None:
            if not isinstance(self.back_projection, (bool, np.bool_)):
                raise PixelNNError(f"back_projection must be true or false, got {self.back_projection!r}")
            set_("back_projection", bool(self.back_projection))
        set_("where", _where(self.where))
        set_("exemplars", tuple(str(e) for e in _items("exemplars", self.exemplars)))
        set_("like", tuple(str(p) for p in _items("like", self.like)))
        regions = self.regions
        if isinstance(regions, (Region, Mapping)) or (isinstance(regions, tuple) and len(regions) == 2 and isinstance(
                regions[0], (str, Path, np.ndarray)) and isinstance(regions[1], Mapping)):
            regions = [regions]  # one region given alone
        set_("regions", tuple(Region.from_any(r) for r in _items("regions", regions)))

    def check_size(self, size: int, name: Callable[[str], str] = str) -> None:
        """Refuse (one-line PixelNNError) settings a ``size`` x ``size`` output cannot take: a window
        side, ``vote_size`` or ``patch_size`` beyond it (the odd ones up to its largest odd side), a
        ``highpass_sigma`` above it (a wider blur removes nothing more, and its kernel grows with sigma).

        ``name`` spells a field in the message (the CLI passes one that gives ``--vote-size``).
        """
        odd_max = size if size % 2 else size - 1
        for field_name in ("patch_size", "vote_size"):
            if getattr(self, field_name) is not None:
                check_number(name(field_name), getattr(self, field_name), 1, odd_max, odd=True)
        if self.highpass_sigma is not None:
            check_number(name("highpass_sigma"), self.highpass_sigma, 0, size)
        for w in self.windows:
            if w is not None and w > size:
                raise PixelNNError(f"{name('windows')} must be sides between 1 and {size} or 'whole' "
                                   f"(outputs are {size}x{size}), got {w}")

    # ------------------------------------------------------------------ derived
    def resolved(self) -> "SynthesisOptions":
        """These options with every ``None`` that the mode has a default for filled in (:mod:`pixelnn.modes`)."""
        from pixelnn.modes import get_mode

        mode = get_mode(self.mode)
        search = self.search or mode.searches[0]
        if search not in mode.searches:
            raise PixelNNError(f"search {search!r} is not available with mode {self.mode!r}; valid: "
                               f"{', '.join(mode.searches)}")
        defaults = mode.defaults
        return self.replace(search=search,
                            **{k: defaults[k] for k in MODE_FIELDS if getattr(self, k) is None and k in defaults})

    def replace(self, **changes: Any) -> "SynthesisOptions":
        """A copy with some fields changed (unknown names raise a one-line error listing the valid ones)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @property
    def where_dict(self) -> dict[str, list[str]]:
        """``where`` as ``{key: [values]}`` (what :meth:`pixelnn.library.ExemplarLibrary.select` takes)."""
        return {k: list(v) for k, v in self.where}

    def output_specs(self) -> list:
        """The outputs these options ask for: sets x windows (:class:`pixelnn.matching.OutputSpec`, 0-based ranks)."""
        from pixelnn.matching import default_output_specs

        sets = None if self.sets is None else [tuple(r - 1 for r in s) for s in self.sets]
        return default_output_specs(sets, self.windows)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: windows with ``"whole"``, ``where`` as a dict, tuples as lists."""
        d = dataclasses.asdict(self)
        d["windows"] = ["whole" if w is None else w for w in self.windows]
        d["sets"] = None if self.sets is None else [list(s) for s in self.sets]
        d["where"] = self.where_dict
        d["exemplars"], d["like"] = list(self.exemplars), list(self.like)
        d["regions"] = [r.to_dict() for r in self.regions]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SynthesisOptions":
        """Options from :meth:`to_dict`'s output (or a ``manifest.json`` holding them under ``"options"``).

        A manifest written before ``order`` existed (version < 3) holds its outputs in grid order: its options
        get ``order="grid"``, so that they still reproduce its files. One written before back-projection and
        input-aware retrieval (version < 4) gets ``back_projection=False`` and ``input_weight=0``; one written
        before approximate search (version < 6), ``search="exact"``; one written before bf16 descriptors
        (version < 7), ``autocast="off"``."""
        if not isinstance(d, Mapping):
            raise PixelNNError(f"synthesis options must be a JSON object, got {type(d).__name__}")
        version = None
        if "options" in d and isinstance(d["options"], Mapping):
            if d.get("format") == "pixelnn-synthesis" and isinstance(d.get("version"), int):
                version = d["version"]
            d = d["options"]
        d = {k: v for k, v in d.items() if k != "format"}
        if version is not None and version < 3:
            d.setdefault("order", "grid")
        if version is not None and version < 4:
            d.setdefault("back_projection", False)
            d.setdefault("input_weight", 0.0)
        if version is not None and version < 6:
            d.setdefault("search", "exact")
        if version is not None and version < 7:
            d.setdefault("autocast", "off")
        _check_names(d)
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps({"format": OPTIONS_FORMAT, **self.to_dict()}, indent=2)

    @classmethod
    def load(cls, path: str | Path) -> "SynthesisOptions":
        """Read options from a JSON file: one written by :meth:`to_json`, or a synthesis ``manifest.json``."""
        from pixelnn.io import read_json

        path = Path(path)
        if not path.is_file():
            raise PixelNNError(f"no such options file: {path}")
        d = read_json(path, "synthesis options", expect=dict)
        if d.get("format") == "pixelnn-synthesis" and "options" not in d:
            raise PixelNNError(f"{path} is a manifest from an older pixelnn without its options; re-run synthesize")
        try:
            return cls.from_dict(d)
        except PixelNNError as e:
            raise PixelNNError(f"{path}: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # a value of the wrong JSON type
            raise PixelNNError(f"{path}: bad synthesis options: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _check_names(d: Mapping[str, Any]) -> None:
    names = [f.name for f in dataclasses.fields(SynthesisOptions)]
    unknown = [k for k in d if k not in names]
    if unknown:
        raise PixelNNError(f"unknown synthesis option(s) {', '.join(map(str, unknown))}; valid: {', '.join(names)}")
