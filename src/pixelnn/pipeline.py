"""The PixelNN pipeline: input -> stage 1 -> retrieval -> pixel matching -> composition.

>>> pipe = PixelNNPipeline.from_model_dir("models/shoes-edges")          # doctest: +SKIP
>>> result = pipe(edge_map, where={"Subcategory": ["Sneakers"]}, seed=0)  # doctest: +SKIP
>>> result.outputs.shape                                                 # doctest: +SKIP
(72, 96, 96, 3)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pixelnn.compose import COLORS, MODE_DEFAULTS, MODES, check_option, compose, recorded_matches
from pixelnn.config import TaskConfig
from pixelnn.errors import PixelNNError
from pixelnn.matching import (DEFAULT_PATCH_SIZE, OutputSpec, coherent_matches, default_output_specs,
                              match_windows, select_sets)
from pixelnn.models.regressor import Regressor, predict

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 11
DEFAULT_DESCRIPTOR = "hypercolumn"
DEFAULT_PCA_DIMS = 64
PCA_FIT_IMAGES = 200


def load_pixel_descriptor(library: Any, name: str = DEFAULT_DESCRIPTOR, regressor: Regressor | None = None,
                          pca_dims: int | None = DEFAULT_PCA_DIMS, seed: int = 0,
                          fit_images: int = PCA_FIT_IMAGES) -> Any:
    """A pixel descriptor for a library, with its PCA fitted once on the library's exemplars and cached.

    The PCA (``pca_dims`` components) is fitted on up to ``fit_images`` (200) evenly spaced exemplars (their stage-1
    images for ``hypercolumn``, their inputs for ``regressor``) and stored in the library folder as
    ``pca_<name>_<dims>.safetensors``; ``pca_dims=None`` returns the full descriptor.
    """
    from pixelnn.descriptors import PixelPCA, fit_pca, make_descriptor

    full = make_descriptor(name, regressor=regressor)
    if pca_dims is None:
        return full
    path = Path(library.root) / f"pca_{name}_{pca_dims}.safetensors"
    if path.is_file():
        pca = PixelPCA.load(path)
    else:
        n = len(library)
        if n == 0:
            raise PixelNNError("the library is empty")
        pick = np.unique(np.linspace(0, n - 1, min(fit_images, n)).astype(int))
        images = library.inputs[pick] if full.takes == "inputs" else library.stage1[pick]
        log.info("fitting a %d-dim PCA of the %s descriptor on %d exemplars (once per library)", pca_dims, name, len(pick))
        pca = fit_pca(np.asarray(images), dims=pca_dims, seed=seed, descriptor=full)
        pca.save(path)
    return make_descriptor(name, regressor=regressor, pca=pca)


@dataclass
class SynthesisResult:
    """Everything one synthesis produced, with per-pixel provenance.

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
        Cosine similarity of the pixel descriptors of the match.
    mode, color : str
        Composition mode and colour space used.
    vote_size, highpass_sigma, chroma_weight : int, float, float
        Patch vote, residual high-pass and chroma weight of the composition (see
        :func:`pixelnn.compose.compose`).
    patch_size : int or None
        Patch side of coherent matching (``mode="coherent"``), else None.
    timings : dict
        Seconds per step.
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
    mode: str
    color: str
    vote_size: int = 1
    highpass_sigma: float = 0.0
    chroma_weight: float = 1.0
    patch_size: int | None = None
    timings: dict[str, float] = field(default_factory=dict)


class PixelNNPipeline:
    """Composes a stage-1 regressor, an exemplar library and a pixel descriptor.

    Parameters
    ----------
    regressor : Regressor
        The stage-1 network f.
    library : pixelnn.library.ExemplarLibrary
        Exemplars (photos y_n, stage-1 outputs f(x_n), global descriptors, labels).
    task : TaskConfig
        How inputs relate to photos (used by ``from_photo``).
    descriptor : callable
        Pixel descriptor: images (N, S, S, 3) uint8 -> (N, S*S, d) unit vectors.

    pixel_cache : PixelDescriptorCache, optional
        Where the exemplars' pixel descriptors are read from and stored (see :mod:`pixelnn.pixel_cache`);
        None computes them for every query.
    """

    def __init__(self, regressor: Regressor, library: Any, task: TaskConfig, descriptor: Any,
                 pixel_cache: Any = None):
        self.regressor = regressor.eval()
        self.library = library
        self.task = task
        self.descriptor = descriptor
        self.pixel_cache = pixel_cache

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, library_dir: str | Path | None = None,
                       descriptor: str = DEFAULT_DESCRIPTOR, pca_dims: int | None = DEFAULT_PCA_DIMS,
                       pixel_cache: bool = True) -> "PixelNNPipeline":
        """Load the regressor, its library (default ``MODEL_DIR/library``) and a pixel descriptor.

        ``pca_dims=None`` uses the full descriptor (1472 dims for the hypercolumn). With
        ``pixel_cache`` (default), exemplar pixel descriptors of at most 256 dims are kept in
        ``LIB_DIR/pixel_cache`` once computed (1.2 MB per exemplar at 64 dims).
        """
        from pixelnn.pixel_cache import MAX_CACHED_DIMS, PixelDescriptorCache

        from pixelnn.library import ExemplarLibrary
        from pixelnn.training import load_model_dir

        regressor, config = load_model_dir(model_dir)
        lib_dir = Path(library_dir) if library_dir else Path(model_dir) / "library"
        if not (lib_dir / "library.json").is_file():
            raise PixelNNError(f"no exemplar library in {lib_dir}; build it with `pixelnn index DATA_DIR --model {model_dir}`")
        library = ExemplarLibrary.open(lib_dir)
        task = TaskConfig.from_dict(config["task"])
        desc = load_pixel_descriptor(library, descriptor, regressor, pca_dims)
        cache = PixelDescriptorCache(lib_dir / "pixel_cache", desc) if pixel_cache and desc.dims <= MAX_CACHED_DIMS else None
        return cls(regressor, library, task, desc, cache)

    def fill_pixel_cache(self, progress: bool = True) -> int:
        """Describe every library exemplar not yet in the pixel cache (``pixelnn index --pixel-cache``).

        Returns the number of exemplars described. Costs one descriptor pass per exemplar (about
        0.07 s at 96x96 on 2 cores) and 1.2 MB of disk per exemplar at 64 dims.
        """
        if self.pixel_cache is None:
            raise PixelNNError(f"descriptor {self.descriptor.name} ({self.descriptor.dims} dims) is not cached; "
                               f"use a PCA-reduced descriptor")
        takes_inputs = getattr(self.descriptor, "takes", "stage1") == "inputs"
        images = self.library.inputs if takes_inputs else self.library.stage1
        return self.pixel_cache.fill(images, progress=progress)

    # ------------------------------------------------------------------ helpers
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
                               f"(use --from-photo to derive it from a photo)")
        return x

    def input_from_photo(self, photo: np.ndarray) -> np.ndarray:
        """Derive the model's input from a photo (S, S, 3) uint8 with the task's rule."""
        from pixelnn.tasks import derive_inputs

        return derive_inputs(np.asarray(photo)[None], self.task)[0]

    def allowed_positions(self, where: dict[str, Sequence[str]] | None = None, exemplars: Sequence[str] | None = None,
                          like: Sequence[np.ndarray] | None = None, like_k: int = 50) -> np.ndarray | None:
        """Library positions the exemplars may come from (None: all).

        ``where`` keeps exemplars whose labels match (AND across keys, OR within one key's values);
        ``exemplars`` names ids directly; ``like`` keeps the ``like_k`` exemplars nearest to each
        given photo (compared as stage-1 reconstructions, like the query). Filters intersect.
        """
        allowed = None
        if where or exemplars:
            allowed = self.library.select(where=where or None, ids=list(exemplars) if exemplars else None)
        if like:
            from pixelnn.retrieval import global_descriptors

            photos = np.stack([np.asarray(p) for p in like])
            inputs = np.stack([self.input_from_photo(p) for p in photos]) if self.task.name != "paired" else None
            recon = predict(self.regressor, inputs) if inputs is not None else photos
            _, idx = self.library.search(global_descriptors(recon), like_k, allowed)
            near = np.unique(idx[idx >= 0])
            allowed = near if allowed is None else np.intersect1d(allowed, near)
        if allowed is not None and len(allowed) == 0:
            raise PixelNNError("the exemplar filters leave no exemplars; relax --where/--exemplars/--like")
        return allowed

    # ------------------------------------------------------------------ the story
    def __call__(self, x: np.ndarray, *, specs: Sequence[OutputSpec] | None = None, top_k: int = DEFAULT_TOP_K,
                 mode: str = "matched", color: str = "rgb", where: dict[str, Sequence[str]] | None = None,
                 exemplars: Sequence[str] | None = None, like: Sequence[np.ndarray] | None = None,
                 num_outputs: int | None = None, seed: int | None = None, patch_size: int = DEFAULT_PATCH_SIZE,
                 vote_size: int | None = None, highpass_sigma: float | None = None,
                 chroma_weight: float | None = None) -> SynthesisResult:
        """Synthesize many outputs for one input x (s, s, C) uint8; see :class:`SynthesisResult`.

        ``num_outputs`` keeps a random subset of the specs (drawn with ``seed``). ``patch_size`` is
        the side of the patch similarity of ``mode="coherent"``
        (:func:`pixelnn.matching.coherent_matches`); ``vote_size``, ``highpass_sigma`` and
        ``chroma_weight`` are the patch vote, residual high-pass and chroma weight of
        :func:`pixelnn.compose.compose` (default: the mode's, :data:`pixelnn.compose.MODE_DEFAULTS`).
        """
        check_option("composition mode", mode, MODES)
        check_option("color", color, COLORS)
        vote_size = MODE_DEFAULTS[mode]["vote_size"] if vote_size is None else vote_size
        highpass_sigma = MODE_DEFAULTS[mode]["highpass_sigma"] if highpass_sigma is None else highpass_sigma
        chroma_weight = MODE_DEFAULTS[mode]["chroma_weight"] if chroma_weight is None else chroma_weight
        for name, v in (("patch_size", patch_size), ("vote_size", vote_size)):
            if v < 1 or v % 2 == 0:
                raise PixelNNError(f"{name} must be an odd number >= 1, got {v}")
        if highpass_sigma < 0 or not 0 <= chroma_weight <= 1:
            raise PixelNNError(f"highpass_sigma must be >= 0 and chroma_weight in [0, 1]; got {highpass_sigma}, "
                               f"{chroma_weight}")
        t = {"start": time.perf_counter()}
        specs = list(specs) if specs is not None else default_output_specs()
        if num_outputs is not None and num_outputs < len(specs):
            keep = np.sort(np.random.default_rng(seed).choice(len(specs), num_outputs, replace=False))
            specs = [specs[i] for i in keep]
        # 1. Stage 1: the smooth regression f(x).
        x = self.check_input(x)
        stage1 = predict(self.regressor, x[None])[0]  # (S, S, 3)
        t["stage1"] = time.perf_counter()
        # 2. Global retrieval: the K library exemplars whose f(x_n) is nearest to f(x), within the filters.
        from pixelnn.retrieval import global_descriptors

        allowed = self.allowed_positions(where, exemplars, like)
        sim, idx = self.library.search(global_descriptors(stage1[None]), top_k, allowed)
        found = idx[0] >= 0
        neighbours, neighbour_sim = idx[0][found], sim[0][found]
        if len(neighbours) == 0:
            raise PixelNNError("no exemplars available for this query")
        needed = max(max(s.ranks) for s in specs) + 1
        if len(neighbours) < needed:
            log.warning("%d exemplars retrieved (top_k=%d, %s available after filters) but the outputs use up to %d; "
                        "outputs needing more are dropped", len(neighbours), top_k,
                        "all" if allowed is None else len(allowed), needed)
            specs = [s for s in specs if max(s.ranks) < len(neighbours)]
            if not specs:
                raise PixelNNError(f"only {len(neighbours)} exemplars available: no output's exemplar set fits")
        t["retrieval"] = time.perf_counter()
        # 3. Pixel descriptors of the query's and the neighbours' stage-1 images.
        ex_photos = np.asarray(self.library.photos[neighbours])
        ex_stage1 = np.asarray(self.library.stage1[neighbours])
        desc = self._describe(x, stage1, neighbours, ex_stage1)  # (1 + K, P, d)
        t["descriptors"] = time.perf_counter()
        # 4. Windowed matching for all windows in one pass, then the exemplar sets.
        size = stage1.shape[0]
        windows = tuple(dict.fromkeys(s.window for s in specs))
        outer = max((w for w in windows if w is not None), default=1)
        best_sim = None
        if mode == "coherent" and outer > 1:  # regions share an (exemplar, offset) label: few seams
            window_sims = torch.empty(len(neighbours), size * size, outer * outer)
            match_windows(desc[0], desc[1:], size, size, (outer,), window_sims=window_sims)  # its scores only
            rank, pos, pix_sim = coherent_matches(desc[0], desc[1:], size, size, specs, windows, window_sims,
                                                  patch=patch_size)
        else:
            best_sim, best_pos = match_windows(desc[0], desc[1:], size, size, windows)
            rank, pos, pix_sim = select_sets(best_sim, best_pos, specs, windows)
        t["matching"] = time.perf_counter()
        # 5. Composition: copy the exemplars' high frequencies onto f(x).
        outputs = compose(stage1, ex_photos, ex_stage1, rank, pos, specs, mode=mode, color=color,
                          best_sim=best_sim, windows=windows, vote=vote_size, highpass_sigma=highpass_sigma,
                          chroma_weight=chroma_weight)
        t["composition"] = time.perf_counter()
        # 6. Correspondences in library coordinates.
        o = len(specs)
        rank, pos = recorded_matches(mode, specs, rank, pos)
        exemplar = neighbours[rank.numpy()].reshape(o, size, size)
        sy, sx = np.divmod(pos.numpy().reshape(o, size, size), size)
        steps = list(t)
        timings = {b: t[b] - t[a] for a, b in zip(steps, steps[1:])}
        timings["total"] = t[steps[-1]] - t["start"]
        return SynthesisResult(
            input=x, stage1=stage1, outputs=outputs, specs=specs, neighbours=neighbours,
            neighbour_ids=[self.library.ids[i] for i in neighbours], neighbour_similarity=neighbour_sim,
            exemplar=exemplar, source_y=sy, source_x=sx, similarity=pix_sim.numpy().reshape(o, size, size),
            mode=mode, color=color, vote_size=vote_size, highpass_sigma=highpass_sigma, chroma_weight=chroma_weight,
            patch_size=patch_size if mode == "coherent" else None, timings=timings)

    def _describe(self, x: np.ndarray, stage1: np.ndarray, neighbours: np.ndarray, ex_stage1: np.ndarray) -> torch.Tensor:
        """Pixel descriptors (1 + K, P, d) of the query and its neighbours, rounded to float16 precision
        so that they are the same whether an exemplar's come from the pixel cache or not."""
        from pixelnn.pixel_cache import round_descriptors

        if getattr(self.descriptor, "takes", "stage1") == "inputs":
            query, ex_images = x[None], np.asarray(self.library.inputs[neighbours])
        else:
            query, ex_images = stage1[None], ex_stage1
        q = round_descriptors(torch.as_tensor(self.descriptor(query)))  # (1, P, d)
        ex = self.pixel_cache(ex_images) if self.pixel_cache is not None else \
            round_descriptors(torch.as_tensor(self.descriptor(ex_images)))  # (K, P, d)
        return torch.cat([q, ex])


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
    from PIL import Image

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
    from pixelnn.data.images import DEFAULT_MAX_PIXELS, UnusableImage, decode_image, fit_image

    path = Path(path)
    if not path.is_file():
        raise PixelNNError(f"no such image file: {path}")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise PixelNNError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; the limit is "
                           f"{max_bytes / 2**20:.1f} MB")
    try:
        im = decode_image(str(path), max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    except UnusableImage as e:
        raise PixelNNError(f"cannot use {path.name}: {e}") from None
    if size is not None:
        return fit_image(im, size, fit, max_upscale=float("inf"))
    s = expect.input_size
    if im.size != (s, s):
        log.warning("%s is %dx%d; resizing it to the model's %dx%d input", path, im.size[0], im.size[1], s, s)
    return fit_input(im, expect)


def subset_result(result: SynthesisResult, indices: Sequence[int]) -> SynthesisResult:
    """The same result with only the outputs ``indices`` (0-based), e.g. to save one output with its correspondences."""
    idx = [int(i) for i in indices]
    n = len(result.outputs)
    bad = [i for i in idx if not 0 <= i < n]
    if bad or not idx:
        raise PixelNNError(f"output(s) {bad or idx} do not exist; this result has outputs 0..{n - 1}")
    return dataclasses.replace(result, outputs=result.outputs[idx], specs=[result.specs[i] for i in idx],
                               exemplar=result.exemplar[idx], source_y=result.source_y[idx],
                               source_x=result.source_x[idx], similarity=result.similarity[idx])


def save_result(result: SynthesisResult, out_dir: str | Path, library: Any, save_correspondence_maps: bool = True,
                photo: np.ndarray | None = None) -> Path:
    """Write a result the way ``pixelnn synthesize`` does, into ``out_dir`` (created atomically).

    Files: ``input.png``, ``stage1.png``, ``output_001.png``..., ``grid.png``, ``correspondences.npz``
    (per output and pixel: library position, exemplar index into ``exemplar_ids``, source y, source x,
    similarity), ``manifest.json`` (per output: exemplar ids and ranks, window, mean similarity; per
    exemplar id: source file and labels) and ``correspondence_001.png``... (paper Fig. 5).
    """
    import json

    from pixelnn.io import atomic_dir, save_image
    from pixelnn.provenance import exemplar_ranks
    from pixelnn.visualize import correspondence_figure, output_grid

    out_dir = Path(out_dir)
    n = len(result.outputs)
    k = len(result.neighbours)
    ex_photos = np.asarray(library.photos[result.neighbours])
    ranks = exemplar_ranks(result.exemplar, result.neighbours)  # (O, S, S)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        save_image(tmp / "input.png", result.input)
        save_image(tmp / "stage1.png", result.stage1)
        if photo is not None:
            save_image(tmp / "photo.png", photo)
        for o in range(n):
            save_image(tmp / f"output_{o + 1:03d}.png", result.outputs[o])
            if save_correspondence_maps:
                fig = correspondence_figure(result.outputs[o], ranks[o], result.source_y[o], result.source_x[o],
                                            result.specs[o].ranks, ex_photos, k)
                save_image(tmp / f"correspondence_{o + 1:03d}.png", fig)
        save_image(tmp / "grid.png", output_grid(result.stage1, result.input, result.outputs))
        np.savez_compressed(tmp / "correspondences.npz", library_position=result.exemplar.astype(np.int64),
                            exemplar_index=ranks.astype(np.int16), source_y=result.source_y.astype(np.int16),
                            source_x=result.source_x.astype(np.int16), similarity=result.similarity.astype(np.float32),
                            exemplar_ids=np.array(result.neighbour_ids))
        manifest = {
            "format": "pixelnn-synthesis", "version": 1, "mode": result.mode, "color": result.color,
            "vote_size": result.vote_size, "highpass_sigma": result.highpass_sigma,
            "chroma_weight": result.chroma_weight, "patch_size": result.patch_size,
            "timings": {k_: round(v, 4) for k_, v in result.timings.items()},
            "outputs": [{"file": f"output_{o + 1:03d}.png", "exemplar_ranks": [r + 1 for r in s.ranks],
                         "exemplar_ids": [result.neighbour_ids[r] for r in s.ranks], "window": s.window_name,
                         "window_size": s.window, "mean_similarity": round(float(result.similarity[o].mean()), 5)}
                        for o, s in enumerate(result.specs)],
            "exemplars": {result.neighbour_ids[r]: {"rank": r + 1, "library_position": int(p),
                                                    "global_similarity": round(float(result.neighbour_similarity[r]), 5),
                                                    "source": library.records[int(p)].get("source"),
                                                    "labels": library.records[int(p)].get("labels", {})}
                          for r, p in enumerate(result.neighbours)},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir
