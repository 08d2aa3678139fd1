"""The PixelNN pipeline: input -> stage 1 -> retrieval -> pixel descriptors -> matching -> composition.

>>> pipe = PixelNNPipeline.from_model_dir("models/shoes-edges")              # doctest: +SKIP
>>> options = SynthesisOptions(where={"Subcategory": ["Sneakers"]}, seed=0)  # doctest: +SKIP
>>> result = pipe(edge_map, options)                                         # doctest: +SKIP
>>> result.outputs.shape                                                     # doctest: +SKIP
(72, 96, 96, 3)

Each step is a public method with a typed result, so other code (benchmarks, the web app, the
cluster runner) composes them instead of re-implementing them: :meth:`PixelNNPipeline.stage1`,
:meth:`~PixelNNPipeline.retrieve` (:class:`Neighbours`), :meth:`~PixelNNPipeline.describe`
(:class:`Descriptors`), :meth:`~PixelNNPipeline.match` (:class:`pixelnn.modes.Matches`) and
:meth:`~PixelNNPipeline.compose`. Every setting comes in one :class:`~pixelnn.options.SynthesisOptions`;
the composition mode is a unit of :mod:`pixelnn.modes`; exemplars are read through the
:class:`~pixelnn.store.ExemplarStore` contract. :meth:`~PixelNNPipeline.batch` runs stage 1, the
global descriptors and the VGG passes over many inputs at once.

Devices: the regressor, AlexNet, VGG-16 and all matching tensors live on ``device`` (CPU, CUDA or
MPS); composition runs on the CPU (elementwise on uint8 values, so :func:`pixelnn.compose.recompose`
rebuilds outputs bit-exactly anywhere). On a GPU the correspondences equal the CPU's up to ties
between equally similar pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pixelnn.compose import back_project, blend_borders
from pixelnn.config import TaskConfig
from pixelnn.data.images import DEFAULT_MAX_PIXELS, UnusableImage, decode_image, fit_image
from pixelnn.descriptors import PixelPCA, fit_pca, make_descriptor
from pixelnn.devices import resolve_autocast, resolve_device
from pixelnn.errors import PixelNNError, printable
from pixelnn.io import atomic_dir, config_from, need, save_image
from pixelnn.zarr_store import open_library
from pixelnn.matching import OutputSpec
from pixelnn.models.loading import load_model_dir
from pixelnn.models.regressor import Regressor, predict
from pixelnn.modes import Matches, get_mode
from pixelnn.options import DEFAULT_DESCRIPTOR, DEFAULT_PCA_DIMS, SynthesisOptions
from pixelnn.pixel_cache import MAX_CACHED_DIMS, PixelDescriptorCache, round_descriptors
from pixelnn.provenance import exemplar_ranks
from pixelnn.ranking import DESCRIPTIONS, RANKING, output_scores, rank_scores, score_kind, score_order
from pixelnn.regions import blend_groups, region_map, resolve_regions, set_ranks
from pixelnn.retrieval import DEFAULT_INPUT_WEIGHT, diverse_subset, global_descriptors, input_descriptors, rerank
from pixelnn.store import ExemplarStore, iter_field
from pixelnn.tasks import derive_inputs
from pixelnn.visualize import correspondence_figure, output_grid

log = logging.getLogger(__name__)

PCA_FIT_IMAGES = 200
MANIFEST_FORMAT = "pixelnn-synthesis"
#: 5: the options' ``diversity_weight`` (older manifests read back as 0);
#: 4: the options' ``back_projection`` and ``input_weight`` (older manifests read back as off);
#: 3: every output's ``score`` and ``grid_position`` and the ``ranking`` (the outputs best first by default);
#: 2: the resolved SynthesisOptions under "options" (1 listed mode, color and composition sizes loose).
MANIFEST_VERSION = 7
#: PNG level of a result's images: 2 encodes 72 outputs and their correspondence figures in 40% of level 6's
#: time, for files 8% (outputs) and 18% (figures) larger; the pixels are the same.
RESULT_PNG_LEVEL = 2
#: Threads encoding a result's images.
RESULT_WRITERS = 2
#: What a new result may replace: an earlier result (never a folder PixelNN did not write).
RESULT_REPLACES = (("manifest.json", MANIFEST_FORMAT),)


def load_pixel_descriptor(library: ExemplarStore, name: str = DEFAULT_DESCRIPTOR, regressor: Regressor | None = None,
                          pca_dims: int | None = DEFAULT_PCA_DIMS, seed: int = 0,
                          fit_images: int = PCA_FIT_IMAGES, autocast: str = "off") -> Any:
    """A pixel descriptor for a library, with its PCA fitted once on the library's exemplars and cached.

    The PCA (``pca_dims`` components) is fitted on the CPU on up to ``fit_images`` (200) evenly spaced
    exemplars (their stage-1 images for ``hypercolumn``, their inputs for ``regressor``) and stored in the
    library folder as ``pca_<name>_<dims>.safetensors``; ``pca_dims=None`` returns the full descriptor.
    The PCA is always fitted in float32; ``autocast`` (``off`` or ``bf16``) is the precision of the returned
    descriptor's network pass. The descriptor computes on the CPU; move it with ``.to(device)``.
    """
    full = make_descriptor(name, regressor=regressor)
    if pca_dims is None:
        return make_descriptor(name, regressor=regressor, autocast=autocast) if autocast != "off" else full
    root = getattr(library, "root", None)  # None: a remote store, the PCA is fitted in memory
    path = Path(root) / f"pca_{name}_{pca_dims}.safetensors" if root is not None else None
    if path is not None and path.is_file():
        pca = PixelPCA.load(path)
    else:
        n = len(library)
        if n == 0:
            raise PixelNNError("the library is empty")
        pick = np.unique(np.linspace(0, n - 1, min(fit_images, n)).astype(int))
        images = library.take("inputs" if full.takes == "inputs" else "stage1", pick)
        log.info("fitting a %d-dim PCA of the %s descriptor on %d exemplars (once per library)", pca_dims, name, len(pick))
        pca = fit_pca(images, dims=pca_dims, seed=seed, descriptor=full)
        if path is not None:
            pca.save(path)
    return make_descriptor(name, regressor=regressor, pca=pca, autocast=autocast)


@dataclass
class Neighbours:
    """Step 2's result: the K exemplars retrieved for one query, in rank order.

    Attributes
    ----------
    positions : ndarray, (K,) int64
        Library positions.
    ids : list of str
        Exemplar ids.
    similarity : ndarray, (K,) float32
        Cosine similarity of their global descriptors to f(x)'s.
    photos, stage1 : ndarray, (K, S, S, 3) uint8
        Their photos y_k and stage-1 outputs f(x_k).
    """

    positions: np.ndarray
    ids: list[str]
    similarity: np.ndarray
    photos: np.ndarray
    stage1: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)


def _no_neighbours(size: int) -> "Neighbours":
    """The neighbours of an exemplar set that no output pixel uses: none."""
    empty = np.zeros((0, size, size, 3), np.uint8)
    return Neighbours(np.zeros(0, np.int64), [], np.zeros(0, np.float32), empty, empty.copy())


@dataclass
class Descriptors:
    """Step 3's result: unit-norm pixel descriptors on the pipeline's device, rounded to float16 precision.

    Attributes
    ----------
    query : Tensor, (P, d)
    exemplars : Tensor, (K, P, d)
    height, width : int
        Pixel grid, P = height * width.
    """

    query: torch.Tensor
    exemplars: torch.Tensor
    height: int
    width: int


@dataclass
class SynthesisResult:
    """Everything one synthesis produced, with per-pixel provenance.

    The per-output arrays (``outputs``, ``specs``, ``exemplar``, ``source_y``, ``source_x``, ``similarity``,
    ``scores``, ``faithfulness``, ``grid_index``) are in the result's order: best score first with ``options.order == "score"``
    (the default), else the grid order (sets x windows).

    Attributes
    ----------
    input : ndarray, (s, s, C) uint8
        The input x.
    stage1 : ndarray, (S, S, 3) uint8
        f(x), the stage-1 regression.
    outputs : ndarray, (O, S, S, 3) uint8
        The composed outputs, one per spec.
    specs : list of OutputSpec
        Exemplar set (neighbour ranks) and window of every output.
    neighbours : ndarray, (K,) int64
        Library positions of the K retrieved exemplars, in rank order.
    neighbour_ids : list of str
        Their exemplar ids.
    neighbour_similarity : ndarray, (K,) float32
        Cosine similarity of their global descriptors to f(x)'s.
    exemplar : ndarray, (O, S, S) int64
        Library position each output pixel was copied from.
    source_y, source_x : ndarray, (O, S, S) int64
        Position in that exemplar.
    similarity : ndarray, (O, S, S) float32
        Descriptor similarity of the match (see :class:`pixelnn.modes.Matches`).
    options : SynthesisOptions
        The resolved options (the mode's defaults filled in): feeding them back reproduces the outputs.
    timings : dict
        Seconds per step (batched steps: this input's share).
    region : ndarray, (S, S) int16, optional
        With ``options.regions``: the exemplar set every pixel was allowed to use, 0 = the default set,
        r = ``options.regions[r - 1]`` (:func:`pixelnn.regions.region_map`); None without regions.
    scores : ndarray, (O,) float64, optional
        The score every output is ranked by (higher is better; :func:`pixelnn.ranking.rank_scores`:
        ``z(faithfulness) + z(mean match similarity)`` over this input's outputs); NaN when not scored
        (``order="grid"``).
    faithfulness : ndarray, (O,) float64, optional
        Every output's faithfulness to the input, re-derived from the output (``score_kind``;
        :func:`pixelnn.ranking.output_scores`); NaN when not scored or for a task without one.
    grid_index : ndarray, (O,) int64, optional
        Every output's position in the grid order (0-based: the order of ``specs`` with ``order="grid"``);
        ``argsort(grid_index)`` restores it.
    score_kind : str, optional
        What ``faithfulness`` measures (:data:`pixelnn.ranking.SCORE_KINDS`); None when not scored.
    region_neighbours : list of ndarray, optional
        With regions: per set (0 = default, then each region), the library positions of its K
        neighbours in rank order. ``neighbours`` is then their union, in first-seen order (the default
        set's first, so that a default rank is also an index into ``neighbours``); a spec's ranks are
        ranks within each pixel's set.
    """

    input: np.ndarray
    stage1: np.ndarray
    outputs: np.ndarray
    specs: list[OutputSpec]
    neighbours: np.ndarray
    neighbour_ids: list[str]
    neighbour_similarity: np.ndarray
    exemplar: np.ndarray
    source_y: np.ndarray
    source_x: np.ndarray
    similarity: np.ndarray
    options: SynthesisOptions
    timings: dict[str, float] = field(default_factory=dict)
    region: np.ndarray | None = None
    region_neighbours: list[np.ndarray] | None = None
    scores: np.ndarray | None = None
    grid_index: np.ndarray | None = None
    score_kind: str | None = None
    faithfulness: np.ndarray | None = None


class PixelNNPipeline:
    """Composes a stage-1 regressor, an exemplar store and pixel descriptors.

    Parameters
    ----------
    regressor : Regressor
        The stage-1 network f.
    library : ExemplarStore
        Exemplars (photos y_n, stage-1 outputs f(x_n), global descriptors, labels), e.g.
        :class:`pixelnn.library.ExemplarLibrary`.
    task : TaskConfig
        How inputs relate to photos (used by ``input_from_photo``).
    descriptor : callable
        The default pixel descriptor: images (N, S, S, 3) uint8 -> (N, S*S, d) unit vectors. Options
        asking for another descriptor or PCA size load it on first use.
    pixel_cache : PixelDescriptorCache, optional
        Where the exemplars' pixel descriptors are read from and stored (see :mod:`pixelnn.pixel_cache`);
        None computes them for every query (and for descriptors loaded later).
    device : str or torch.device
        ``auto`` (CUDA when there), ``cpu``, ``cuda[:N]`` or ``mps``.
    """

    def __init__(self, regressor: Regressor, library: ExemplarStore, task: TaskConfig, descriptor: Any = None,
                 pixel_cache: Any = None, *, device: str | torch.device = "auto", use_pixel_cache: bool | None = None):
        self.device = resolve_device(device)
        self.regressor = regressor.eval().to(self.device)
        self.library = library
        self.task = task
        self.use_pixel_cache = pixel_cache is not None if use_pixel_cache is None else use_pixel_cache
        self._descriptors: dict[tuple[str, int | None, str], tuple[Any, Any]] = {}  # (name, dims, autocast)
        self._descriptors_lock = threading.RLock()
        self._default: tuple[str, int | None] = (DEFAULT_DESCRIPTOR, DEFAULT_PCA_DIMS)
        if descriptor is not None:
            pca = getattr(descriptor, "pca", None)
            self._default = ("regressor" if getattr(descriptor, "takes", "") == "inputs" else "hypercolumn",
                             pca.dims if pca is not None else None)
            self._descriptors[(*self._default, getattr(descriptor, "autocast", "off"))] = (descriptor.to(self.device),
                                                                                          pixel_cache)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, library_dir: str | Path | None = None,
                       descriptor: str = DEFAULT_DESCRIPTOR, pca_dims: int | None = DEFAULT_PCA_DIMS,
                       pixel_cache: bool = True, device: str | torch.device = "auto") -> "PixelNNPipeline":
        """Load the regressor, its library (default ``MODEL_DIR/library``) and a pixel descriptor.

        ``pca_dims=None`` uses the full descriptor (1472 dims for the hypercolumn). With
        ``pixel_cache`` (default), exemplar pixel descriptors of at most 256 dims are kept in
        ``LIB_DIR/pixel_cache`` once computed (1.2 MB per exemplar at 64 dims). Options naming another
        descriptor load it on first use.
        """
        regressor, config = load_model_dir(model_dir)
        cfg_path = Path(model_dir) / "config.json"
        task = config_from(TaskConfig, need(config, "task", cfg_path, dict), cfg_path, "task")
        library = open_library(library_dir if library_dir else Path(model_dir) / "library", model_dir=model_dir)
        pipe = cls(regressor, library, task, device=device, use_pixel_cache=pixel_cache)
        pipe._default = (descriptor, pca_dims)
        pipe.pixel_descriptor(descriptor, pca_dims, "auto")  # now: the first request should not pay for the PCA fit
        return pipe

    @property
    def descriptor(self) -> Any:
        """The default pixel descriptor (the one ``from_model_dir`` was asked for)."""
        return self.pixel_descriptor(*self._default, autocast="auto")[0]

    @property
    def pixel_cache(self) -> Any:
        """The default descriptor's pixel cache (None when off or not cacheable)."""
        return self.pixel_descriptor(*self._default, autocast="auto")[1]

    # ------------------------------------------------------------------ parts
    def pixel_descriptor(self, name: str = DEFAULT_DESCRIPTOR, pca_dims: int | None = DEFAULT_PCA_DIMS,
                         autocast: str = "off") -> tuple[Any, Any]:
        """The pixel descriptor ``name`` with ``pca_dims`` PCA dims (None or 0: full), in precision ``autocast``
        (``off``, ``bf16``, or ``auto``: bf16 where this device computes it natively), and its pixel cache (or
        None; one per precision), loaded on first use (fitting the PCA once per library, in float32)."""
        if autocast == "auto":
            autocast = resolve_autocast(autocast, self.device)
        key = (name, pca_dims or None, autocast)
        with self._descriptors_lock:  # several web workers may ask for the same new descriptor at once
            if key not in self._descriptors:
                twin = next((v for k, v in self._descriptors.items() if k[:2] == key[:2]), None)
                if twin is not None:  # the same descriptor (PCA, network) in the other precision, e.g. one given
                    desc = copy.copy(twin[0])
                    desc.autocast = autocast
                    cache = PixelDescriptorCache(twin[1].root, desc) if twin[1] is not None else None
                else:
                    desc = load_pixel_descriptor(self.library, name, self.regressor, key[1],
                                                 autocast=autocast).to(self.device)
                    cache_dir = getattr(self.library, "pixel_cache_dir", None)  # None: the store keeps none
                    cache = PixelDescriptorCache(Path(cache_dir), desc) \
                        if self.use_pixel_cache and cache_dir is not None and desc.dims <= MAX_CACHED_DIMS else None
                self._descriptors[key] = (desc, cache)
            return self._descriptors[key]

    def fill_pixel_cache(self, progress: bool = True) -> int:
        """Describe every library exemplar not yet in the pixel cache (``pixelnn index --pixel-cache``).

        Returns the number of exemplars described. Costs one descriptor pass per exemplar (about
        0.07 s at 96x96 on 2 cores) and 1.2 MB of disk per exemplar at 64 dims.
        """
        desc, cache = self.pixel_descriptor(*self._default, autocast="auto")  # what default options use here
        if getattr(self.library, "pixel_cache_dir", None) is None:
            raise PixelNNError("this library is a chunked store, which keeps no pixel descriptors (they are "
                               "computed per query)")
        if cache is None:
            raise PixelNNError(f"descriptor {desc.name} ({desc.dims} dims) is not cached; "
                               f"use a PCA-reduced descriptor")
        field_ = "inputs" if getattr(desc, "takes", "stage1") == "inputs" else "stage1"
        added = 0
        with tqdm(total=len(self.library), desc="pixel descriptors", unit="img", disable=not progress) as bar:
            for images in iter_field(self.library, field_, 256):
                added += cache.fill(images, progress=False)
                bar.update(len(images))
        return added

    def check_options(self, options: SynthesisOptions | None = None, **overrides: Any) -> SynthesisOptions:
        """``options`` (default: the defaults) with ``overrides`` applied, the mode's defaults filled in, checked
        against this model's output size (:meth:`SynthesisOptions.check_size`)."""
        options = options if options is not None else SynthesisOptions()
        if not isinstance(options, SynthesisOptions):
            raise PixelNNError(f"options must be a SynthesisOptions, got {type(options).__name__}")
        options = options.replace(**overrides) if overrides else options
        name, dims = self._default
        regions = resolve_regions(options.regions, self.regressor.config.size) if options.regions else ()
        superres = self.task.name == "superres"
        options = options.replace(
            descriptor=options.descriptor or name, regions=regions,
            pca_dims=(dims or 0) if options.pca_dims is None else options.pca_dims,
            back_projection=superres and options.back_projection is not False,  # only a thumbnail projects
            autocast=resolve_autocast(options.autocast, self.device),  # what ran: "bf16" or "off"
            input_weight=DEFAULT_INPUT_WEIGHT.get(self.task.name, 0.0) if options.input_weight is None
            else options.input_weight,
            **{k: v for k, v in get_mode(options.mode).task_defaults.get(self.task.name, {}).items()
               if getattr(options, k) is None}).resolved()  # the mode's defaults for this task, then its own
        options.check_size(self.regressor.config.size)  # e.g. a vote or a window wider than the output
        return options

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate an input against the task: (s, s, C) uint8 (a 2-D edge map gets a channel axis)."""
        x = np.asarray(x)
        if x.ndim == 2:
            x = x[:, :, None]
        c = self.regressor.config.in_channels
        if x.ndim != 3 or x.dtype != np.uint8:
            raise PixelNNError(f"input must be an (H, W, C) uint8 image, got {x.shape} {x.dtype}")
        if x.shape[2] != c:
            if c == 1 and x.shape[2] == 3:
                x = np.round(x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None].astype(np.uint8)
            elif c == 3 and x.shape[2] == 1:
                x = np.repeat(x, 3, axis=2)
            else:
                raise PixelNNError(f"input has {x.shape[2]} channels; this model takes {c}")
        s = self.regressor.config.input_size
        if x.shape[:2] != (s, s):
            raise PixelNNError(f"input is {x.shape[1]}x{x.shape[0]}; this model takes {s}x{s} "
                               f"(or derive the input from a photo with the model's task)")
        return x

    def input_from_photo(self, photo: np.ndarray) -> np.ndarray:
        """Derive the model's input from a photo (S, S, 3) uint8 with the task's rule.

        ``normals``: the face normal map (:mod:`pixelnn.normals`); a photo without a face raises a one-line
        PixelNNError.
        """
        return derive_inputs(np.asarray(photo)[None], self.task)[0]

    @property
    def photo_fit(self) -> str:
        """How a photo is fitted to the square unless told: ``crop`` for ``normals`` models (aligned face crops,
        as the training photos were), else ``pad``."""
        return "crop" if self.task.name == "normals" else "pad"

    def input_from_photo_file(self, path: str | Path, fit: str | None = None, **limits: Any
                              ) -> tuple[np.ndarray, np.ndarray]:
        """Read a photo file and derive the model's input from it.

        Parameters
        ----------
        path : path
        fit : {'pad', 'crop'}, optional
            Default :attr:`photo_fit`.
        **limits
            ``max_pixels``, ``max_bytes`` of :func:`load_image_file`.

        Returns
        -------
        photo : ndarray, (S, S, 3) uint8
        x : ndarray, (s, s, C) uint8

        Raises
        ------
        PixelNNError
            Unreadable file, or no input derivable (``normals``: "NAME: no face found in the photo ...").
        """
        photo = load_image_file(path, self.task.size, fit=fit or self.photo_fit, **limits)
        try:
            return photo, self.input_from_photo(photo)
        except PixelNNError as e:
            raise PixelNNError(f"{Path(path).name}: {e}") from None

    def output_specs(self, options: SynthesisOptions) -> list[OutputSpec]:
        """The outputs of ``options``: sets x windows, or a random subset of ``num_outputs`` drawn with ``seed``."""
        specs = options.output_specs()
        if options.num_outputs is not None and options.num_outputs < len(specs):
            keep = np.sort(np.random.default_rng(options.seed).choice(len(specs), options.num_outputs, replace=False))
            specs = [specs[i] for i in keep]
        return specs

    def allowed_positions(self, options: SynthesisOptions, like_photos: Sequence[np.ndarray] | None = None
                          ) -> np.ndarray | None:
        """Library positions the exemplars may come from (None: all).

        ``options.where`` keeps exemplars whose labels match (AND across keys, OR within one key's values);
        ``options.exemplars`` names ids directly; ``options.like`` (photo files) and ``like_photos``
        (arrays, (S, S, 3) uint8) keep the ``options.like_k`` exemplars nearest to each photo (compared as
        stage-1 reconstructions, like the query). Filters intersect.
        """
        allowed = None
        if options.where or options.exemplars:
            allowed = self.library.select(where=options.where_dict or None,
                                          ids=list(options.exemplars) if options.exemplars else None)
        like = [load_image_file(p, self.task.size, fit=self.photo_fit) for p in options.like] + list(like_photos or [])
        if like:
            photos = np.stack([np.asarray(p) for p in like])
            inputs = np.stack([self.input_from_photo(p) for p in photos]) if self.task.name != "paired" else None
            recon = predict(self.regressor, inputs) if inputs is not None else photos
            _, idx = self.library.search(global_descriptors(recon, device=self.device), options.like_k, allowed)
            near = np.unique(idx[idx >= 0])
            allowed = near if allowed is None else np.intersect1d(allowed, near)
        if allowed is not None and len(allowed) == 0:
            raise PixelNNError("the exemplar filters leave no exemplars; relax where / exemplars / like")
        return allowed

    def region_sets(self, options: SynthesisOptions, like_photos: Sequence[np.ndarray] | None = None
                    ) -> list[np.ndarray | None]:
        """The library positions each exemplar set may use: the default set's (the top-level filters and
        ``like_photos``, :meth:`allowed_positions`), then each region's own filters', in order."""
        sets = [self.allowed_positions(options, like_photos)]
        for i, r in enumerate(options.regions, 1):
            try:
                sets.append(self.allowed_positions(options.replace(where=r.where, exemplars=r.exemplars, like=r.like,
                                                                   regions=())))
            except PixelNNError as e:
                raise PixelNNError(f"region {i} ({r.describe()}): {e}") from None
        return sets

    # ------------------------------------------------------------------ the steps
    def stage1(self, x: np.ndarray) -> np.ndarray:
        """Step 1: f(x), (S, S, 3) uint8 of a checked input (s, s, C); (B, S, S, 3) for a batch (B, s, s, C)."""
        x = np.asarray(x)
        return predict(self.regressor, x[None])[0] if x.ndim == 3 else predict(self.regressor, x)

    def retrieve(self, stage1: np.ndarray, options: SynthesisOptions, allowed: np.ndarray | None = None,
                 x: np.ndarray | None = None) -> Neighbours:
        """Step 2: the ``top_k`` exemplars whose f(x_n) is nearest to f(x) (S, S, 3), within ``allowed``.

        With ``options.input_weight`` > 0 (input-aware retrieval) the ``rerank_k`` nearest are re-ranked by
        ``(1 - w) * sim(f(x), f(x_n)) + w * sim(x, x_n)`` (:func:`pixelnn.retrieval.rerank`), which needs the
        checked input ``x`` (s, s, C). With ``options.diversity_weight`` > 0 (diverse neighbours) the ``top_k``
        are then picked from those candidates by greedy maximal marginal relevance, the redundancy of two
        candidates being the cosine of their global descriptors (:func:`pixelnn.retrieval.diverse_subset`).
        """
        sim, idx = self.library.search(global_descriptors(stage1[None], device=self.device),
                                       self._search_k(options), allowed)
        return self._neighbours(*self._rerank(sim[0], idx[0], x, options))

    @staticmethod
    def _search_k(options: SynthesisOptions) -> int:
        """How many neighbours the global search returns: ``top_k``, or the candidates of input-aware retrieval
        and diverse neighbours."""
        if not options.input_weight and not options.diversity_weight:
            return options.top_k
        return max(options.top_k, options.rerank_k or max(4 * options.top_k, 64))

    def _rerank(self, sim: np.ndarray, idx: np.ndarray, x: np.ndarray | None, options: SynthesisOptions
                ) -> tuple[np.ndarray, np.ndarray]:
        """One query's search row (M,) -> its ``top_k`` neighbours: re-ranked by the input similarity, then picked
        for diversity, when asked."""
        keep = options.top_k if not options.diversity_weight else len(idx)
        if options.input_weight:
            if x is None:
                raise PixelNNError("input-aware retrieval (input_weight > 0) needs the input x")
            found = idx[idx >= 0]
            cand = input_descriptors(self.library.take("inputs", found))
            sim, idx = rerank(sim, idx, input_descriptors(np.asarray(x)[None])[0], cand, options.input_weight, keep)
        if not options.diversity_weight:
            return sim, idx
        found = idx >= 0
        sim, idx = sim[found], idx[found]  # (M,) by relevance, best first
        desc = self.library.take("global", idx).astype(np.float64)  # (M, D) unit rows: conv5 of f(x_n)
        picked = diverse_subset(sim, desc @ desc.T, options.diversity_weight, options.top_k)
        return sim[picked], idx[picked]

    def _neighbours(self, sim: np.ndarray, idx: np.ndarray) -> Neighbours:
        found = idx >= 0
        positions, similarity = idx[found], sim[found]
        if len(positions) == 0:
            raise PixelNNError("no exemplars available for this query")
        return Neighbours(positions, self.library.ids_of(positions), similarity,
                          self.library.take("photos", positions), self.library.take("stage1", positions))

    def fit_specs(self, specs: list[OutputSpec], neighbours: Neighbours, options: SynthesisOptions,
                  allowed: np.ndarray | None, what: str = "") -> list[OutputSpec]:
        """The outputs whose exemplar sets fit the neighbours found (a warning when some are dropped);
        ``what`` names the exemplar set in the messages (regions)."""
        needed = max(max(s.ranks) for s in specs) + 1
        if len(neighbours) >= needed:
            return specs
        kept = [s for s in specs if max(s.ranks) < len(neighbours)]
        if not kept:  # the error alone (no warning line above it)
            raise PixelNNError(f"{what}only {len(neighbours)} exemplars available: no output's exemplar set fits")
        log.warning(what + "%d exemplars retrieved (top_k=%d, %s available after filters) but the outputs use up to %d; "
                    "outputs needing more are dropped", len(neighbours), options.top_k,
                    "all" if allowed is None else len(allowed), needed)
        return kept

    def describe(self, x: np.ndarray, stage1: np.ndarray, neighbours: Neighbours, options: SynthesisOptions,
                 query: torch.Tensor | None = None) -> Descriptors:
        """Step 3: pixel descriptors of the query and its neighbours, rounded to float16 precision so that
        they are the same whether an exemplar's come from the pixel cache or not.

        ``query`` (P, d) is the query's descriptor when already computed (batches).
        """
        desc, cache = self.pixel_descriptor(options.descriptor, options.pca_dims, options.autocast)
        takes_inputs = getattr(desc, "takes", "stage1") == "inputs"
        ex_images = self.library.take("inputs", neighbours.positions) if takes_inputs else neighbours.stage1
        if query is None:
            query = self._queries(desc, x[None] if takes_inputs else stage1[None])[0]  # (P, d)
        ex = cache(ex_images) if cache is not None else round_descriptors(torch.as_tensor(desc(ex_images)))  # (K, P, d)
        return Descriptors(query.to(self.device), ex.to(self.device), stage1.shape[0], stage1.shape[1])

    def match(self, descriptors: Descriptors, specs: Sequence[OutputSpec], options: SynthesisOptions) -> Matches:
        """Step 4: the mode's matcher (:mod:`pixelnn.modes`), on the pipeline's device."""
        d = descriptors
        return get_mode(options.mode).match(d.query, d.exemplars, d.height, d.width, specs, options)

    def compose(self, stage1: np.ndarray, neighbours: Neighbours, matches: Matches, specs: Sequence[OutputSpec],
                options: SynthesisOptions) -> np.ndarray:
        """Step 5: copy the exemplars' high frequencies onto f(x): (O, S, S, 3) uint8 (on the CPU)."""
        return get_mode(options.mode).compose(stage1, neighbours.photos, neighbours.stage1, matches, specs, options)

    def result(self, x: np.ndarray, stage1: np.ndarray, neighbours: Neighbours, matches: Matches,
               outputs: np.ndarray, specs: list[OutputSpec], options: SynthesisOptions,
               timings: dict[str, float], region: np.ndarray | None = None,
               region_neighbours: list[np.ndarray] | None = None) -> SynthesisResult:
        """Step 6: the result, with the mode's recorded correspondences in library coordinates (and, with
        regions, the region map and every set's neighbours), back-projected onto a superres input
        (:meth:`back_project`) and ranked by :meth:`rank` (the faithfulness of the outputs as composed,
        before back-projection makes it exact)."""
        start = time.perf_counter()
        projected = self.back_project(outputs, x, options)
        if projected is not outputs:
            spent = time.perf_counter() - start
            timings = {**timings, "composition": timings.get("composition", 0.0) + spent,
                       "total": timings.get("total", 0.0) + spent}
        o, (h, w) = len(specs), stage1.shape[:2]
        rank, pos = get_mode(options.mode).recorded(matches, specs)
        exemplar = neighbours.positions[rank.cpu().numpy()].reshape(o, h, w)
        sy, sx = np.divmod(pos.cpu().numpy().reshape(o, h, w), w)
        return self.rank(SynthesisResult(
            input=x, stage1=stage1, outputs=projected, specs=specs, neighbours=neighbours.positions,
            neighbour_ids=neighbours.ids, neighbour_similarity=neighbours.similarity, exemplar=exemplar,
            source_y=sy, source_x=sx, similarity=matches.similarity.cpu().numpy().reshape(o, h, w), options=options,
            timings=timings, region=region, region_neighbours=region_neighbours), composed=outputs)

    def back_project(self, outputs: np.ndarray, x: np.ndarray, options: SynthesisOptions) -> np.ndarray:
        """Step 6a, superres with ``options.back_projection``: every output's area downsampling made equal to the
        thumbnail x (:func:`pixelnn.compose.back_project`); otherwise ``outputs`` itself."""
        if not options.back_projection or self.task.name != "superres":
            return outputs
        return back_project(outputs, x, outputs.shape[1] // np.asarray(x).shape[0])

    def rank(self, result: SynthesisResult, composed: np.ndarray | None = None) -> SynthesisResult:
        """Step 7: score every output of a grid-ordered result and, with ``options.order == "score"``, sort the
        outputs best first (every per-output array; stable, so ties keep the grid order).

        The score is :func:`pixelnn.ranking.rank_scores`: the task's faithfulness to the input
        (:func:`pixelnn.ranking.output_scores`: superres PSNR, edge AP, normal angle) and the outputs' mean
        match similarity, each standardized over this input's outputs; ``order="grid"`` computes none (NaN)
        and keeps the order. The result records each output's grid position (``grid_index``) and the time
        taken (``timings["ranking"]``). ``composed`` (O, S, S, 3): the outputs the faithfulness is measured on
        when they differ from ``result.outputs`` (before back-projection, which makes a superres output's
        re-derivation exact and so every output's faithfulness equal); default ``result.outputs``.
        """
        start = time.perf_counter()
        n = len(result.outputs)
        scored = result.options.order == "score"
        kind = score_kind(self.task, result.input) if scored else None
        faith = output_scores(result.outputs if composed is None else composed, result.input, self.task,
                              device=self.device) if kind \
            else np.full(n, np.nan)
        scores = rank_scores(faith, result.similarity) if scored else np.full(n, np.nan)
        ranked = dataclasses.replace(result, scores=scores, faithfulness=faith, grid_index=np.arange(n, dtype=np.int64),
                                     score_kind=kind)
        if scored:
            ranked = subset_result(ranked, score_order(scores))
        seconds = time.perf_counter() - start
        ranked.timings = {**result.timings, "ranking": seconds, "total": result.timings.get("total", 0.0) + seconds}
        return ranked

    # ------------------------------------------------------------------ regions
    def union_neighbours(self, sets: Sequence[Neighbours]) -> tuple[Neighbours, list[torch.Tensor]]:
        """The union of several sets' neighbours, and where each set's lie in it.

        Returns
        -------
        union : Neighbours
            Every exemplar retrieved by some set once, in first-seen order (the first set's in its rank
            order first); ``similarity`` is that of the set that first retrieved it.
        members : list of Tensor, (K_s,) int64
            Per set, the index in ``union`` of each of its neighbours, in the set's rank order.
        """
        positions = np.concatenate([n.positions for n in sets])  # (sum K_s,)
        _, first = np.unique(positions, return_index=True)
        keep = np.sort(first)  # first-seen order
        index_of = {int(q): i for i, q in enumerate(positions[keep])}
        members = [torch.tensor([index_of[int(q)] for q in n.positions], dtype=torch.int64) for n in sets]
        ids = [i for n in sets for i in n.ids]
        union = Neighbours(positions[keep], [ids[i] for i in keep], np.concatenate([n.similarity for n in sets])[keep],
                           np.concatenate([n.photos for n in sets])[keep], np.concatenate([n.stage1 for n in sets])[keep])
        return union, members

    def synthesize_regions(self, x: np.ndarray, stage1: np.ndarray, options: SynthesisOptions,
                           specs: list[OutputSpec], allowed_sets: Sequence[np.ndarray | None], clock: "_Clock",
                           query: torch.Tensor | None = None) -> SynthesisResult:
        """Steps 2-6 with region-level control (``options.regions``, checked): see docs/synthesis.md.

        Every set (the default, then each region's, :meth:`region_sets`) gets its own global retrieval of
        ``top_k`` within its allowed positions; f(x) and the query's pixel descriptors are computed once,
        the union of the neighbours' descriptors once. Every pixel is then matched only against its own
        set's neighbours (:meth:`pixelnn.modes.CompositionMode.match_regions`; ``matched`` matches each
        set on its pixels alone, so matching costs about one pass; ``coherent`` matches the whole image
        per set). Copy modes compose the merged matches once, so a ``vote_size`` > 1 blends the residuals
        across region borders (a pixel's recorded source stays in its own set); ``global`` and
        ``authors`` compose each set on its own and keep each set's pixels.
        """
        size = stage1.shape[0]
        region = region_map(options.regions, size)  # (S, S) int16
        for r in range(1, len(options.regions) + 1):
            if not (region == r).any():
                log.warning("region %d (%s) covers no pixel: later regions cover all of it", r,
                            options.regions[r - 1].describe())
        # a set without pixels (the default one, when the regions cover the image) retrieves nothing
        sets = [self.retrieve(stage1, options, allowed, x) if (region == r).any() else _no_neighbours(size)
                for r, allowed in enumerate(allowed_sets)]
        if (region == 0).any():  # the default set drops the outputs it cannot fill, as without regions
            specs = self.fit_specs(specs, sets[0], options, allowed_sets[0], "the default set: ")
        needed = max(max(s.ranks) for s in specs) + 1
        for r, nb in enumerate(sets[1:], 1):
            if (region == r).any() and len(nb) < needed:
                log.info("region %d (%s): %d exemplars for outputs that use up to %d; its ranks repeat (rank r is "
                         "its rank r mod %d)", r, options.regions[r - 1].describe(), len(nb), needed, len(nb))
        # every set's ranks of every output (a region with fewer neighbours reuses them: set_ranks)
        set_specs = [[OutputSpec(set_ranks(s.ranks, max(len(nb), 1)), s.window) for s in specs] for nb in sets]
        union, members = self.union_neighbours(sets)
        clock("retrieval", None)
        d = clock("descriptors", self.describe(x, stage1, union, options, query))  # exemplars (U, P, d)
        mode = get_mode(options.mode)
        flat = torch.from_numpy(region.reshape(-1).astype(np.int64)).to(self.device)  # (P,)
        if mode.copies:
            matches = clock("matching", mode.match_regions(d.query, d.exemplars, d.height, d.width, specs, options,
                                                           flat, members, set_specs))
            outputs = clock("composition", self.compose(stage1, union, matches, specs, options))
        else:
            o, p = len(specs), d.height * d.width
            outputs = np.zeros((o, d.height, d.width, 3), np.uint8)
            rank = torch.zeros(o, p, dtype=torch.int64, device=self.device)
            pos, sim = torch.zeros_like(rank), torch.zeros(o, p, device=self.device)
            windows: tuple = ()
            for s, m in enumerate(members):
                inside = region == s  # (S, S)
                if not inside.any():
                    continue
                pix = torch.from_numpy(np.flatnonzero(inside)).to(self.device)
                part = clock("matching", mode.match(d.query, d.exemplars[m.to(self.device)], d.height, d.width,
                                                    set_specs[s], options))
                mine = clock("composition", mode.compose(stage1, union.photos[m.numpy()], union.stage1[m.numpy()],
                                                         part, set_specs[s], options))  # (O, S, S, 3)
                outputs[:, inside] = mine[:, inside]
                r_s, p_s = mode.recorded(part, set_specs[s])
                rank[:, pix], pos[:, pix] = m.to(self.device)[r_s[:, pix]], p_s[:, pix]
                sim[:, pix], windows = part.similarity[:, pix].float(), part.windows
            matches = Matches(rank, pos, sim, windows)
        if options.region_blend > 0:  # 6. Poisson blending of the colour steps at the borders
            groups = blend_groups(region, [n.positions for n in sets])
            outputs = clock("composition", blend_borders(outputs, stage1, groups, options.region_blend))
        return self.result(x, stage1, union, matches, outputs, specs, options, clock.timings(), region=region,
                           region_neighbours=[n.positions for n in sets])

    # ------------------------------------------------------------------ the story
    def __call__(self, x: np.ndarray, options: SynthesisOptions | None = None, *,
                 like_photos: Sequence[np.ndarray] | None = None, **overrides: Any) -> SynthesisResult:
        """Synthesize many outputs for one input x (s, s, C) uint8; see :class:`SynthesisResult`.

        ``options`` holds every setting (:class:`~pixelnn.options.SynthesisOptions`); keyword ``overrides``
        change some of its fields (``pipe(x, mode="coherent")``). ``like_photos`` adds "like these" photos
        given as arrays (S, S, 3) uint8.
        """
        options = self.check_options(options, **overrides)
        specs = self.output_specs(options)
        clock = _Clock()
        x = self.check_input(x)
        # 1. Stage 1: the smooth regression f(x).
        stage1 = clock("stage1", self.stage1(x))
        if options.regions:  # 2-6 per exemplar set, merged (region-level control)
            return self.synthesize_regions(x, stage1, options, specs, self.region_sets(options, like_photos), clock)
        # 2. Global retrieval: the K exemplars whose f(x_n) is nearest to f(x), within the filters.
        allowed = self.allowed_positions(options, like_photos)
        neighbours = self.retrieve(stage1, options, allowed, x)
        specs = clock("retrieval", self.fit_specs(specs, neighbours, options, allowed))
        # 3. Pixel descriptors (multiscale hypercolumns) of f(x) and of the neighbours' f(x_k).
        descriptors = clock("descriptors", self.describe(x, stage1, neighbours, options))
        # 4. Matching: every output pixel's exemplar pixel, by the mode's rule (windows, exemplar sets).
        matches = clock("matching", self.match(descriptors, specs, options))
        # 5. Composition: out_i = f_i(x) + (y_k[j] - f_j(x_k)), or the mode's rule.
        outputs = clock("composition", self.compose(stage1, neighbours, matches, specs, options))
        # 6. The outputs with their correspondences in library coordinates.
        return self.result(x, stage1, neighbours, matches, outputs, specs, options, clock.timings())

    def batch(self, inputs: Sequence[np.ndarray] | np.ndarray, options: SynthesisOptions | None = None, *,
              like_photos: Sequence[np.ndarray] | None = None, exact: bool | None = None,
              **overrides: Any) -> list[SynthesisResult]:
        """Synthesize for many inputs (B, s, s, C): the options, filters and retrieval once per batch, the
        convolution passes (stage 1, AlexNet's global descriptors, the queries' VGG-16 hypercolumns) and the
        global search over the whole batch at once; matching and composition then run per input.

        Parameters
        ----------
        inputs : sequence of ndarray, each (s, s, C) uint8
        options, like_photos, overrides
            As in :meth:`__call__`.
        exact : bool, optional
            True: the convolution passes and the search run one input at a time inside the batch, so every
            result is bit-identical to a single :meth:`__call__`. False: they run over the whole batch at
            once (what pays on a GPU); a batched convolution rounds differently from a single one, so in
            rare pixels a match can flip to an equally similar exemplar pixel (measured in docs/results.md:
            99.998% of correspondences identical on CPU). None (default): exact on the CPU, where batched
            convolutions were measured no faster, batched on CUDA and MPS.

        Returns
        -------
        list of SynthesisResult
            One per input, in order; batched steps' timings are split evenly between the inputs.
        """
        options = self.check_options(options, **overrides)
        exact = self.device.type == "cpu" if exact is None else exact
        xs = np.stack([self.check_input(x) for x in inputs])  # (B, s, s, C)
        if options.regions:  # one input at a time (every result as a single call's), the filters once
            allowed_sets, specs = self.region_sets(options, like_photos), self.output_specs(options)
            results = []
            for x in xs:
                clock = _Clock()
                stage1 = clock("stage1", self.stage1(x))
                results.append(self.synthesize_regions(x, stage1, options, specs, allowed_sets, clock))
            return results
        b = len(xs)
        clock = _Clock()
        stage1 = clock("stage1", np.stack([self.stage1(x) for x in xs]) if exact else self.stage1(xs))  # (B, S, S, 3)
        allowed = self.allowed_positions(options, like_photos)
        if exact:  # the single-input steps, one input at a time
            neighbours = clock("retrieval", [self.retrieve(f, options, allowed, x) for f, x in zip(stage1, xs)])
            queries: Sequence[torch.Tensor | None] = [None] * b  # describe() computes each query's own
        else:
            sim, idx = self.library.search(global_descriptors(stage1, device=self.device), self._search_k(options),
                                           allowed)
            neighbours = clock("retrieval", [self._neighbours(*self._rerank(sim[i], idx[i], xs[i], options))
                                             for i in range(b)])
            desc, _ = self.pixel_descriptor(options.descriptor, options.pca_dims, options.autocast)
            images = xs if getattr(desc, "takes", "stage1") == "inputs" else stage1
            queries = clock("descriptors", self._queries(desc, images))  # (B, P, d)
        shared = {k: v / b for k, v in clock.timings().items() if k != "total"}
        all_specs = self.output_specs(options)
        results = []
        for i in range(b):
            specs = self.fit_specs(all_specs, neighbours[i], options, allowed)
            one = _Clock()
            descriptors = one("descriptors", self.describe(xs[i], stage1[i], neighbours[i], options, queries[i]))
            matches = one("matching", self.match(descriptors, specs, options))
            outputs = one("composition", self.compose(stage1[i], neighbours[i], matches, specs, options))
            t = one.timings()
            timings = {k: shared.get(k, 0.0) + t.get(k, 0.0) for k in ("stage1", "retrieval", "descriptors",
                                                                         "matching", "composition")}
            timings["total"] = sum(timings.values())
            results.append(self.result(xs[i], stage1[i], neighbours[i], matches, outputs, specs, options, timings))
        return results

    @staticmethod
    def _queries(desc: Any, images: np.ndarray) -> torch.Tensor:
        """Pixel descriptors (B, P, d) of query images in one pass, rounded like :meth:`describe`'s."""
        return round_descriptors(torch.as_tensor(desc(images)))


class _Clock:
    """Seconds per step: ``clock(name, value)`` records the time since the previous call and returns value."""

    def __init__(self) -> None:
        self._last = self._start = time.perf_counter()
        self._t: dict[str, float] = {}

    def __call__(self, name: str, value: Any) -> Any:
        now = time.perf_counter()
        self._t[name] = self._t.get(name, 0.0) + now - self._last
        self._last = now
        return value

    def timings(self) -> dict[str, float]:
        return {**self._t, "total": self._last - self._start}


def fit_input(im: Any, expect: Any) -> np.ndarray:
    """Turn an RGB image into a model input: resized to ``expect.input_size`` and ``expect.in_channels``.

    Parameters
    ----------
    im : PIL.Image.Image or ndarray, (H, W, 3) uint8
        The image (a warning is logged when it has to be resized).
    expect : RegressorConfig
        The model's input size s and channel count C.

    Returns
    -------
    ndarray, (s, s, C) uint8
    """
    if isinstance(im, np.ndarray):
        im = Image.fromarray(np.ascontiguousarray(im))
    im = im.convert("RGB")
    s, c = expect.input_size, expect.in_channels
    if im.size != (s, s):
        log.info("input image is %dx%d; resizing it to the model's %dx%d input", im.size[0], im.size[1], s, s)
        im = im.resize((s, s), Image.BOX if im.size[0] > s else Image.BICUBIC)
    arr = np.asarray(im.convert("L"))[:, :, None] if c == 1 else np.asarray(im)
    return np.ascontiguousarray(arr)


def input_from_drawing(drawing: np.ndarray, expect: Any) -> np.ndarray:
    """A model input from a drawing (e.g. a sketch pad's canvas): transparency onto white, then :func:`fit_input`.

    Parameters
    ----------
    drawing : ndarray, (H, W), (H, W, 3) or (H, W, 4) uint8
        Strokes on a white or transparent canvas (edge models expect black strokes on white).
    expect : RegressorConfig

    Returns
    -------
    ndarray, (s, s, C) uint8
    """
    a = np.asarray(drawing)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or a.size == 0:
        raise PixelNNError(f"a drawing must be an (H, W[, 1|3|4]) uint8 image, got {a.shape} {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[:, :, 3:].astype(np.float32) / 255.0
        a = np.rint(a[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return fit_input(a, expect)


def load_image_file(path: str | Path, size: int | None = None, fit: str = "pad", expect: Any = None,
                    max_pixels: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Read a user's image file as uint8.

    With ``size``: a photo fitted to ``size x size`` (``fit`` = pad on white or centre crop),
    (S, S, 3). With ``expect`` (a RegressorConfig): a model input resized to its ``input_size``
    (with a warning if it had another size) and converted to its channel count, (s, s, C).
    Unreadable or corrupt files, files over ``max_bytes`` bytes and images over ``max_pixels``
    pixels (default: the decoder's 64 MP guard) raise a one-line PixelNNError.
    """
    path = Path(path)
    if not path.is_file():
        raise PixelNNError(f"no such image file: {printable(path)}")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise PixelNNError(f"{printable(path.name)} is {path.stat().st_size / 2**20:.1f} MB; the limit is "
                           f"{max_bytes / 2**20:.1f} MB")
    try:
        im = decode_image(str(path), max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    except UnusableImage as e:
        raise PixelNNError(f"cannot use {printable(path.name)}: {e}") from None
    if size is not None:
        return fit_image(im, size, fit, max_upscale=float("inf"))
    s = expect.input_size
    if im.size != (s, s):
        log.warning("%s is %dx%d; resizing it to the model's %dx%d input", printable(path), im.size[0], im.size[1],
                    s, s)
    return fit_input(im, expect)


def subset_result(result: SynthesisResult, indices: Sequence[int]) -> SynthesisResult:
    """The same result with only the outputs ``indices`` (0-based), in that order: e.g. one output to save with
    its correspondences, or a permutation (:func:`grid_order`). Every per-output array is indexed alike;
    ``grid_index`` keeps each output's grid position."""
    idx = [int(i) for i in indices]
    n = len(result.outputs)
    bad = [i for i in idx if not 0 <= i < n]
    if bad or not idx:
        raise PixelNNError(f"output(s) {bad or idx} do not exist; this result has outputs 0..{n - 1}")
    pick = (lambda a: None if a is None else np.asarray(a)[idx])  # noqa: E731
    return dataclasses.replace(result, outputs=result.outputs[idx], specs=[result.specs[i] for i in idx],
                               exemplar=result.exemplar[idx], source_y=result.source_y[idx],
                               source_x=result.source_x[idx], similarity=result.similarity[idx],
                               scores=pick(result.scores), grid_index=pick(result.grid_index),
                               faithfulness=pick(result.faithfulness))


def grid_order(result: SynthesisResult) -> SynthesisResult:
    """A result's outputs back in grid order (sets x windows, as ``order="grid"`` returns them), every per-output
    array with them; the result itself when it has no ``grid_index``."""
    if result.grid_index is None:
        return result
    return subset_result(result, np.argsort(result.grid_index, kind="stable"))


def save_result(result: SynthesisResult, out_dir: str | Path, library: Any, save_correspondence_maps: bool = True,
                photo: np.ndarray | None = None, input_file: str | Path | None = None,
                recover_parent: bool = True) -> Path:
    """Write a result the way ``pixelnn synthesize`` does, into ``out_dir`` (created atomically).

    Files: ``input.png``, ``stage1.png``, ``output_001.png``... (in the result's order: best first with
    ``order="score"``), ``grid.png``, ``correspondences.npz`` (per output and pixel: library position, exemplar
    index into ``exemplar_ids``, source y, source x, similarity; per output: ``score`` and ``grid_index``),
    ``manifest.json`` (``ranking``; per output: ``score``, ``grid_position`` (1-based), exemplar ids and ranks,
    window, mean similarity; per exemplar id: source file and labels; the resolved options, which
    ``pixelnn synthesize --options`` reads back to reproduce the outputs) and ``correspondence_001.png``... (paper Fig. 5). The folder is
    renamed into place when complete, so its existence means a complete result (:func:`result_complete`).
    An existing ``out_dir`` is replaced only when it is an earlier result (its manifest's format is
    ``pixelnn-synthesis``) or empty: any other folder is a one-line PixelNNError. ``input_file``: the file the
    input came from, recorded in the manifest (``input``: its path and sha256). ``recover_parent=False``: the
    caller already ran :func:`pixelnn.io.recover_all` on the parent folder (``synthesize`` does, once per run).

    With regions (``result.region``), ``correspondences.npz`` also holds ``region`` (S, S) int16, the set
    every pixel was allowed to use (0 = default, r = region r), and ``region_neighbours`` (R + 1, K) int64,
    each set's neighbours' library positions in rank order (-1 pads a set with fewer); ``exemplar_index``
    then indexes ``exemplar_ids``, the union of the sets' neighbours. The manifest adds ``regions`` (per
    set: its filters, mask file and sha256, pixel count and neighbour ids) and, per output,
    ``region_exemplar_ids`` (each set's members of the output's exemplar set).
    """
    import json

    out_dir = Path(out_dir)
    n = len(result.outputs)
    k = len(result.neighbours)
    ex_photos = library.take("photos", result.neighbours) if save_correspondence_maps else None  # for the figures
    records = library.records_of(result.neighbours)
    ranks = exemplar_ranks(result.exemplar, result.neighbours)  # (O, S, S)
    regions = result.region is not None
    with atomic_dir(out_dir, overwrite=True, replaces=RESULT_REPLACES, what="synthesis result",
                    recover_parent=recover_parent) as tmp, \
            ThreadPoolExecutor(RESULT_WRITERS, thread_name_prefix="pixelnn-png") as writers:
        # The folder appears only when complete, so its files are written in place (no temp file each), at
        # PNG level 2, by threads (Pillow encodes without the GIL): 0.67 -> 0.2 s for 72 outputs and maps.
        pending = []

        def write(name: str, image: np.ndarray) -> None:
            pending.append(writers.submit(save_image, tmp / name, image, atomic=False, compress_level=RESULT_PNG_LEVEL))

        extra = {}
        if regions:
            sets = result.region_neighbours
            table = np.full((len(sets), max(len(members) for members in sets)), -1, np.int64)  # (R + 1, K)
            for i, members in enumerate(sets):
                table[i, :len(members)] = members
            extra = {"region": result.region.astype(np.int16), "region_neighbours": table}
        pending.append(writers.submit(  # zlib, too, runs without the GIL: beside the figures and PNGs
            np.savez_compressed, tmp / "correspondences.npz", library_position=result.exemplar.astype(np.int64),
            exemplar_index=ranks.astype(np.int16), source_y=result.source_y.astype(np.int16),
            source_x=result.source_x.astype(np.int16), similarity=result.similarity.astype(np.float32),
            exemplar_ids=np.array(result.neighbour_ids), **_ranking_arrays(result), **extra))
        write("input.png", result.input)
        write("stage1.png", result.stage1)
        if photo is not None:
            write("photo.png", photo)
        for o in range(n):
            write(f"output_{o + 1:03d}.png", result.outputs[o])
            if save_correspondence_maps:
                shown = tuple(int(r) for r in np.unique(ranks[o])) if regions else result.specs[o].ranks
                fig = correspondence_figure(result.outputs[o], ranks[o], result.source_y[o], result.source_x[o],
                                            shown, ex_photos, k)
                write(f"correspondence_{o + 1:03d}.png", fig)
        write("grid.png", output_grid(result.stage1, result.input, result.outputs))
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "options": result.options.to_dict(),
            "library": str(getattr(library, "url", None) or getattr(library, "root", "")) or None,
            **({"input": input_record(input_file)} if input_file is not None else {}),
            "timings": {k_: round(v, 4) for k_, v in result.timings.items()},
            "ranking": _ranking_record(result),
            "outputs": [{"file": f"output_{o + 1:03d}.png", **_output_rank(result, o),
                         "exemplar_ranks": [r + 1 for r in s.ranks],
                         "exemplar_ids": [result.neighbour_ids[r] for r in s.ranks], "window": s.window_name,
                         "window_size": s.window, "mean_similarity": round(float(result.similarity[o].mean()), 5)}
                        for o, s in enumerate(result.specs)],
            "exemplars": {result.neighbour_ids[r]: {"rank": r + 1, "library_position": int(p),
                                                    "global_similarity": round(float(result.neighbour_similarity[r]), 5),
                                                    "source": records[r].get("source"),
                                                    "labels": records[r].get("labels", {})}
                          for r, p in enumerate(result.neighbours)},
        }
        if regions:
            _add_regions(manifest, result)
        for job in pending:  # every image written (or its error raised) before the manifest, which goes last
            job.result()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _ranking_arrays(result: SynthesisResult) -> dict[str, np.ndarray]:
    """``correspondences.npz``'s per-output ranking: ``score`` and ``faithfulness`` (O,) float64 (NaN: not
    scored) and ``grid_index`` (O,) int64 (the output's 0-based position in grid order)."""
    n = len(result.outputs)
    scores = np.full(n, np.nan) if result.scores is None else np.asarray(result.scores, np.float64)
    faith = np.full(n, np.nan) if result.faithfulness is None else np.asarray(result.faithfulness, np.float64)
    grid = np.arange(n, dtype=np.int64) if result.grid_index is None else np.asarray(result.grid_index, np.int64)
    return {"score": scores, "faithfulness": faith, "grid_index": grid}


def _ranking_record(result: SynthesisResult) -> dict[str, Any]:
    """The manifest's ``ranking``: the order, what the scores are and how the grid order is recovered."""
    kind = result.score_kind
    return {"order": result.options.order,
            "score": RANKING if result.options.order == "score" else None,
            "faithfulness": kind,
            "faithfulness_description": DESCRIPTIONS.get(kind, "not scored (order 'grid', or a task without a score)"),
            "higher_is_better": True,
            "grid_position": "each output's 1-based position in the grid order (sets x windows, set-major): its "
                             "number with --order grid"}


def _output_rank(result: SynthesisResult, o: int) -> dict[str, Any]:
    """One output's ``score`` and ``faithfulness`` (None: not scored) and ``grid_position`` (1-based) in the
    manifest."""
    def value(a: np.ndarray | None) -> float | None:
        v = None if a is None else float(a[o])
        return round(v, 5) if v is not None and np.isfinite(v) else None

    grid = o if result.grid_index is None else int(result.grid_index[o])
    return {"score": value(result.scores), "faithfulness": value(result.faithfulness), "grid_position": grid + 1}


def _add_regions(manifest: dict, result: SynthesisResult) -> None:
    """The manifest's record of a region result: which set every output pixel was allowed to use."""
    from pixelnn.options import decode_mask, mask_sha256

    id_of = dict(zip(result.neighbours.tolist(), result.neighbour_ids))
    sets = result.region_neighbours
    o = result.options
    entries = [{"region": 0, "set": "default", "where": o.where_dict, "exemplars": list(o.exemplars),
                "like": list(o.like), "pixels": int((result.region == 0).sum()),
                "neighbours": [id_of[int(q)] for q in sets[0]]}]
    for r, reg in enumerate(o.regions, 1):
        entries.append({"region": r, "mask_source": reg.source, "mask_sha256": mask_sha256(decode_mask(reg.mask)),
                        "where": reg.where_dict, "exemplars": list(reg.exemplars), "like": list(reg.like),
                        "pixels": int((result.region == r).sum()), "neighbours": [id_of[int(q)] for q in sets[r]]})
    manifest["regions"] = entries
    manifest["region_order"] = ("pixels outside every region use the default set (region 0); where masks overlap, "
                                "the later region wins")
    for out, spec in zip(manifest["outputs"], result.specs):
        out["region_exemplar_ids"] = [[id_of[int(n[r])] for r in set_ranks(spec.ranks, len(n))] if len(n) else []
                                      for n in sets]
    for s, n in enumerate(sets):
        for rank, q in enumerate(n):
            manifest["exemplars"][id_of[int(q)]].setdefault("set_ranks", {})[str(s)] = rank + 1


def input_record(path: str | Path) -> dict[str, str]:
    """What a result's manifest records of its input file: ``{"file": absolute path, "sha256": of its bytes}``."""
    from pixelnn.io import file_sha256

    path = Path(path)
    return {"file": str(path.resolve()), "sha256": file_sha256(path)}


def result_complete(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a complete result written by :func:`save_result` (its ``manifest.json``,
    written last inside a folder renamed into place)."""
    return (Path(out_dir) / "manifest.json").is_file()
