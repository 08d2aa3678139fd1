"""The PixelNN web app: ``pixelnn serve --model MODEL_DIR`` (Gradio, bound to 127.0.0.1:7860 by default).

A thin shell over the library. :class:`WebApp` holds the loaded :class:`~pixelnn.pipeline.PixelNNPipeline`
and turns the page's raw values (uploaded file paths, the sketch pad's canvas, the label choices) into
library calls; every method is plain Python, so it is tested without a browser. :func:`build_ui` lays
out the page and wires its events; :func:`serve` loads a model and runs it.

What a user can do: give an input (a photo, from which the model's task derives the input; an input
image; or a sketch drawn on the page), restrict the exemplars (label values offered by the library,
"like these" photos), set every synthesis option in the Options panel (one
:class:`~pixelnn.options.SynthesisOptions` per request, :meth:`WebApp.options_from_page`; the status shows
the resolved options that ran), see the stage-1 image and the gallery of all outputs, click an output to see its
correspondence map and the exemplars that supplied most of its pixels, click a pixel to see its source
exemplar and position, and download one output or all of them with their correspondences. The Regions
panel paints regions (on the stage-1 image or an output) and gives each its own exemplar set (labels, a
"like this" photo, or the exemplar of the pixel clicked): :meth:`WebApp.mask_from_drawing` and
:meth:`WebApp.region_from_page` build the :class:`~pixelnn.options.Region` list that the next synthesis
passes as ``SynthesisOptions.regions``; :meth:`WebApp.regions_overlay` shows them over stage 1.

Under use: ``workers`` syntheses run at once (``pixelnn serve --workers``, default 2), each taking up to
``batch`` waiting requests of the same options (:class:`Batcher`); other users wait in a bounded queue
(``--max-queue``) and see their position; uploads over :data:`MAX_UPLOAD_BYTES` or :data:`MAX_UPLOAD_PIXELS`
(the sketch pad's and the region editor's canvases too, checked from their headers before Gradio decodes
them), non-images and corrupt files get a one-line message in the page, and the app keeps serving. Request
bodies are capped and nothing is fetched from the network on a request's behalf
(:class:`pixelnn.web_limits.RequestLimits`; Gradio's analytics are off). ``serve`` keeps its files
(downloads, each page's Gradio cache) in its own temporary folder, removed when it stops
(:class:`pixelnn.web_limits.TempRoot`), and takes an optional login (``auth``); bound beyond loopback
without one, it warns.
"""

import contextlib
import functools
import importlib.util
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pixelnn.config import check_number
from pixelnn.errors import PixelNNError, printable
from pixelnn.options import MODE_FIELDS, parse_sets, parse_windows  # noqa: F401 (parse_*: part of this API)
from pixelnn.web_limits import MAX_JSON_BYTES, RequestLimits, TempRoot, is_loopback, upload_cap

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home

log = logging.getLogger(__name__)

#: Largest upload accepted, in bytes (Gradio refuses bigger files at upload; the app re-checks).
MAX_UPLOAD_BYTES = 10 * 2**20
#: Largest image accepted, in pixels (checked from the header, before decoding).
MAX_UPLOAD_PIXELS = 25_000_000
#: At most this many "like these" photos.
MAX_LIKE_PHOTOS = 8
#: Label keys with more distinct values than this get no menu (e.g. a per-image id).
MAX_LABEL_VALUES = 10000
#: Number of top contributing exemplars shown for an output.
TOP_CONTRIBUTORS = 6
#: Side, in pixels, at which outputs, correspondence maps and exemplars are shown (nearest enlargement).
VIEW_SIDE = 384
#: Sketch pad canvas side in pixels (the drawing is reduced to the model's input size).
CANVAS_SIDE = 384

#: Syntheses that ``pixelnn serve`` runs at the same time by default (``--workers``), and the most allowed.
DEFAULT_WORKERS = 2
MAX_WORKERS = 64
#: Most waiting requests of the same options run as one batch (``--batch``).
MAX_BATCH = 64
#: Requests that may wait in the queue (``--max-queue``); the next gets "the queue is full".
MAX_QUEUE = 64

SOURCES = ("photo", "input", "sketch")
#: The Options panel's choice of ``search`` that leaves it to the mode (``SynthesisOptions.search`` None).
SEARCH_DEFAULT = "default"
#: Folder of the work dir that keeps the regions' "like this" photos (not pruned with the download folders).
_KEEP = "kept-photos"
#: Prefix of the work dir's folders that hold one page's Gradio file cache (:func:`build_ui`; not pruned either).
_CACHE = "gradio-cache-"
#: The Options panel's fields, in page order: SynthesisOptions field names (``where`` and ``like`` come from
#: the "Restrict the exemplars" panel).
PAGE_OPTIONS = ("mode", "color", "top_k", "windows", "sets", "patch_size", "vote_size", "highpass_sigma",
                "chroma_weight", "descriptor", "pca_dims", "num_outputs", "seed", "search", "order", "region_blend")


class WebApp:
    """The app's logic over one pipeline, independent of Gradio.

    Parameters
    ----------
    pipe : PixelNNPipeline
        The loaded model and library.
    max_upload_bytes, max_upload_pixels : int
        Upload limits (files and decoded images; the pixel limit applies to the sketch pad's canvas and the
        region editor's layers too).
    work_dir : path, optional
        Where download zips are written (default: ``work/`` in a :class:`~pixelnn.web_limits.TempRoot`,
        ``temp_root``, removed by :meth:`close` or at exit; each page's Gradio cache is a folder in it,
        :func:`build_ui`).
    workers : int
        Syntheses that run at the same time (each on its own thread; default 1). ``pixelnn serve`` defaults to
        :data:`DEFAULT_WORKERS`.
    batch : int
        At most this many waiting requests with the same options (and no "like" photos or regions) run as one
        :meth:`~pixelnn.pipeline.PixelNNPipeline.batch` call (default 1: none); bit-identical to single runs on
        the CPU, one batched pass on a GPU.
    max_queue : int
        Requests that may wait for a worker; the next one is refused with "the queue is full".
    """

    def __init__(self, pipe: Any, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 max_upload_pixels: int = MAX_UPLOAD_PIXELS, work_dir: str | Path | None = None,
                 workers: int = 1, batch: int = 1, max_queue: int = MAX_QUEUE):
        self.pipe = pipe
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_upload_pixels = int(max_upload_pixels)
        self.temp_root = None if work_dir else TempRoot()
        self.work_dir = Path(work_dir) if work_dir else self.temp_root.path / "work"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.labels = {k: v for k, v in pipe.library.labels_index().items() if len(v) <= MAX_LABEL_VALUES}
        self.size = int(pipe.task.size)
        self.scale = max(1, VIEW_SIDE // self.size)
        # Bookkeeping of concurrent pipeline runs: the queue lets ``workers`` requests (times ``batch``) in at a
        # time; the batcher's slots make sure no more than ``workers`` pipeline calls run even if the app is
        # wired differently, and ``peak_active`` shows it in tests.
        self.workers, self.batch, self.max_queue = (check_number(name, value, 1, top, integer=True) for name, value, top in
                                                    (("workers", workers, MAX_WORKERS), ("batch", batch, MAX_BATCH),
                                                     ("max_queue", max_queue, None)))
        self._batcher = Batcher(self._run_group, workers=workers, batch=batch)
        self._count_lock = threading.Lock()
        self.active = 0
        self.peak_active = 0
        self.runs = 0
        self.batches = 0

    def close(self) -> None:
        """Remove the app's temporary folder (when it made one): its downloads and, under ``serve``, Gradio's
        cache. The app must not be used afterwards."""
        if self.temp_root is not None:
            self.temp_root.cleanup()

    # ------------------------------------------------------------------ description
    @property
    def task_name(self) -> str:
        return self.pipe.task.name

    def describe(self) -> str:
        """One Markdown paragraph about the model and library."""
        cfg = self.pipe.regressor.config
        task = {"superres": f"{cfg.input_size}x{cfg.input_size} thumbnail -> {self.size}x{self.size} photo",
                "edges": f"edge map -> {self.size}x{self.size} photo",
                "normals": f"face normal map -> {self.size}x{self.size} photo",
                "paired": f"{cfg.input_size}x{cfg.input_size} input -> {self.size}x{self.size} photo"}[self.task_name]
        return (f"Model: **{self.task_name}** ({task}); library: **{len(self.pipe.library)}** exemplars"
                + (f", labels: {', '.join(self.labels)}" if self.labels else "") + ".")

    # ------------------------------------------------------------------ inputs
    def read_photo(self, path: str | Path | None) -> np.ndarray:
        """An uploaded photo fitted to the model's square, (S, S, 3) uint8 (padded on white; normals models:
        centre-cropped, as their aligned face crops were)."""
        from pixelnn.pipeline import load_image_file

        if not path:
            raise PixelNNError("upload a photo first")
        fit = getattr(self.pipe, "photo_fit", "pad")
        return load_image_file(path, self.size, fit=fit, max_pixels=self.max_upload_pixels,
                               max_bytes=self.max_upload_bytes)

    @property
    def takes_sketches(self) -> bool:
        """Whether a drawing makes sense as this model's input (not for normal maps)."""
        return self.task_name != "normals"

    def source_help(self, source: str) -> str:
        """The page's one-line help for an input source, worded for the model's task."""
        if self.task_name == "normals":
            return {"photo": "Upload a face photo (an aligned, centred crop such as CelebA's): its surface-normal map "
                             "is derived with the face mesh and shown as the input.",
                    "input": "Upload a normal map: RGB = (n + 1) / 2 with x to the right, y up and z toward the "
                             "viewer (a camera-facing pixel is (128, 128, 255)); grey (128) where there is no surface.",
                    "sketch": "Normals models take a normal map, not a sketch."}[source]
        return {"photo": f"Upload a photo; the model's input is derived from it ({self.task_name}).",
                "input": "Upload an input image as the model takes it (it is resized to the model's input).",
                "sketch": "Pick the brush, then draw black strokes on white (edge models expect outlines)."}[source]

    def read_input(self, path: str | Path | None) -> np.ndarray:
        """An uploaded input image resized to the model's input, (s, s, C) uint8."""
        from pixelnn.pipeline import load_image_file

        if not path:
            raise PixelNNError("upload an input image first")
        return load_image_file(path, None, expect=self.pipe.regressor.config, max_pixels=self.max_upload_pixels,
                               max_bytes=self.max_upload_bytes)

    def read_drawing(self, drawing: Any) -> np.ndarray:
        """The sketch pad's value (``{"composite": (H, W, 4) uint8, ...}`` or an array) as a model input."""
        from pixelnn.pipeline import input_from_drawing

        canvas = drawing.get("composite") if isinstance(drawing, dict) else drawing
        if canvas is None:
            raise PixelNNError("the sketch pad is empty: draw some strokes first")
        canvas = _canvas(canvas, "the sketch pad's image", self.max_upload_pixels)
        if canvas.ndim == 3 and canvas.shape[2] == 4:
            ink = (canvas[:, :, 3] > 0) & (canvas[:, :, :3].min(axis=2) < 250)
        else:
            ink = np.asarray(canvas).reshape(canvas.shape[0], canvas.shape[1], -1).min(axis=2) < 250
        if not ink.any():
            raise PixelNNError("the sketch pad is empty: draw some strokes first")
        return input_from_drawing(canvas, self.pipe.regressor.config)

    def make_input(self, source: str, photo_path: str | None = None, input_path: str | None = None,
                   drawing: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The model input x (s, s, C) uint8 and the photo it came from (or None) for one input source."""
        if source == "photo":
            photo = self.read_photo(photo_path)
            return self.pipe.input_from_photo(photo), photo
        if source == "input":
            return self.read_input(input_path), None
        if source == "sketch":
            if not self.takes_sketches:
                raise PixelNNError("this model takes a normal map: upload a face photo or a normal map instead of "
                                   "drawing")
            return self.read_drawing(drawing), None
        raise PixelNNError(f"unknown input source {source!r}; choose one of {', '.join(SOURCES)}")

    # ------------------------------------------------------------------ options
    def default_options(self) -> Any:
        """The options a request gets when the Options panel is left alone: the library defaults with the
        pipeline's descriptor and PCA size, mode fields left None (the mode's)."""
        from pixelnn.options import SynthesisOptions

        d = self.pipe.check_options()
        return SynthesisOptions(descriptor=d.descriptor, pca_dims=d.pca_dims)

    def options_from_page(self, values: dict[str, Any] | None = None,
                          label_values: dict[str, Sequence[str] | None] | None = None,
                          like_paths: Sequence[str] | None = None, regions: Sequence[Any] | None = None) -> Any:
        """One :class:`~pixelnn.options.SynthesisOptions` from the page's raw values.

        Parameters
        ----------
        values : dict, optional
            The Options panel, keyed by SynthesisOptions field (:data:`PAGE_OPTIONS`): ``mode``, ``color``,
            ``descriptor`` (str; empty: the default), ``top_k``, ``pca_dims``, ``num_outputs``, ``seed``
            (numbers; empty: the default, ``pca_dims`` 0 = the full descriptor), ``windows`` (text such as
            ``"1,7,11,whole"``), ``sets`` (text of 1-based rank ranges such as ``"1,2,1-3,1-5"`` or
            ``"1+3"``; empty: the authors' 18), ``patch_size``, ``vote_size``, ``highpass_sigma``,
            ``chroma_weight`` (numbers or their text; empty = None = the mode's default (for this task:
            coherent edges' ``chroma_weight`` is 0.8); ``patch_size`` and
            ``vote_size`` 0 too, while ``highpass_sigma`` and ``chroma_weight`` 0 are values). ``num_outputs``
            empty or 0: all outputs. ``region_blend`` (the Regions panel; a number, empty: the default).
            Missing keys take the defaults.
        label_values : dict, optional
            The label menus: key -> chosen values (``where``).
        like_paths : list of str, optional
            Uploaded "like these" photos (checked against the upload limits; ``like``).
        regions : list of Region, optional
            The Regions panel's regions (:meth:`region_from_page`), in order (``regions``).

        Returns
        -------
        SynthesisOptions
            Unresolved: fields left empty stay None (:meth:`PixelNNPipeline.check_options` fills them in).

        Raises
        ------
        PixelNNError
            A one-line message naming the bad value (e.g. an even vote size, chroma 1.5, a bad window).
        """
        v = dict(values or {})
        unknown = sorted(set(v) - set(PAGE_OPTIONS))
        if unknown:
            raise PixelNNError(f"unknown page option(s) {', '.join(unknown)}; valid: {', '.join(PAGE_OPTIONS)}")
        base = self.default_options()
        given: dict[str, Any] = {}
        for name in ("mode", "color", "descriptor", "order"):
            text = _text(v.get(name))
            if text:
                given[name] = text
        search = _text(v.get("search"))
        if search and search != SEARCH_DEFAULT:  # the mode's own
            given["search"] = search
        for name in ("top_k", "pca_dims", "seed"):
            number = _number(v.get(name), name, integer=True)
            if number is not None:
                given[name] = number
        for name in ("num_outputs", "patch_size", "vote_size"):  # 0 is no valid value: like empty
            given[name] = _number(v.get(name), name, integer=True) or None
        for name in ("highpass_sigma", "chroma_weight"):
            given[name] = _number(v.get(name), name)
        blend = _number(v.get("region_blend"), "region_blend")
        if blend is not None:
            given["region_blend"] = blend
        windows = _text(v.get("windows"))
        if windows:
            given["windows"] = parse_windows(windows)
        given["sets"] = parse_sets(_text(v.get("sets"))) if _text(v.get("sets")) else None
        where, paths = self._restrictions(label_values, like_paths)
        return base.replace(**given, where=where, like=paths, regions=tuple(regions or ()))

    def _restrictions(self, label_values: dict[str, Sequence[str] | None] | None,
                      like_paths: Sequence[str] | None) -> tuple[dict[str, list[str]], tuple[str, ...]]:
        if label_values is not None and not isinstance(label_values, dict):
            raise PixelNNError(f"the label menus must be a mapping of key to values, got {type(label_values).__name__}")
        where = {str(k): [str(v) for v in _values(f"label {k}", vals)] for k, vals in (label_values or {}).items()}
        where = {k: v for k, v in where.items() if v}
        paths = tuple(str(p) for p in _values("the 'like these' photos", like_paths) if p)
        if len(paths) > MAX_LIKE_PHOTOS:
            raise PixelNNError(f"{len(paths)} 'like these' photos; the limit is {MAX_LIKE_PHOTOS}")
        for p in paths:  # the upload limits, before the pipeline reads them
            self.read_photo(p)
        return where, paths

    # ------------------------------------------------------------------ regions (issue 14)
    def mask_from_drawing(self, drawing: Any, size: int | None = None) -> np.ndarray:
        """The painted strokes of the Regions editor as an (S, S) bool region mask.

        Parameters
        ----------
        drawing : dict or ndarray
            The editor's value ``{"background", "layers": [(H, W, 4) uint8, ...], "composite"}``: every
            stroke layer's pixels with alpha > 0 are painted (the background is ignored). An (H, W, 4)
            array is one layer; an (H, W) array is painted where nonzero. A layer over ``max_upload_pixels``
            is refused (the page's editor never decodes one: :func:`bound_canvas`).
        size : int, optional
            S (default: the model's output size).

        Returns
        -------
        ndarray, (S, S) bool
            A pixel is inside when at least half of its area in the canvas is painted (area reduction
            of the canvas to S x S, threshold 0.5).

        Raises
        ------
        PixelNNError
            Nothing painted, strokes too thin to cover half of any output pixel, or a layer too large.
        """
        from PIL import Image

        size = int(size or self.size)
        layers = drawing.get("layers") if isinstance(drawing, dict) else [drawing]
        if layers is not None and not isinstance(layers, (list, tuple)):
            raise PixelNNError(f"the region editor's layers must be a list of images, got {type(layers).__name__}")
        painted = None
        for layer in layers or []:
            if layer is None:
                continue
            a = _canvas(layer, "a region layer", self.max_upload_pixels)
            if a.ndim == 3 and a.shape[2] == 4:
                ink = a[:, :, 3] > 0
            else:
                ink = (a.reshape(a.shape[0], a.shape[1], -1) > 0).any(axis=2)
            if painted is not None and ink.shape != painted.shape:
                raise PixelNNError(f"the region's layers differ in size: {painted.shape[1]}x{painted.shape[0]} and "
                                   f"{ink.shape[1]}x{ink.shape[0]}")
            painted = ink if painted is None else painted | ink
        if painted is None or not painted.any():
            raise PixelNNError("the region is empty: paint it with the brush on the Regions image first")
        h, w = painted.shape
        if h % size == 0 and w % size == 0:  # the share of every output pixel's block that is painted
            cover = painted.reshape(size, h // size, size, w // size).mean(axis=(1, 3))
        else:
            cover = np.asarray(Image.fromarray(painted.astype(np.float32), "F").resize((size, size), Image.BOX))
        mask = cover >= 0.5 - 1e-6
        if not mask.any():
            raise PixelNNError(f"the painted strokes cover no whole pixel of the {size}x{size} output: paint with a "
                               f"wider brush")
        return mask

    def region_from_page(self, mask: np.ndarray, label_values: dict[str, Sequence[str] | None] | None = None,
                         like_paths: Sequence[str] | None = None, exemplar_id: str | None = None) -> Any:
        """One :class:`~pixelnn.options.Region` from the Regions panel: a mask and its exemplar set.

        Parameters
        ----------
        mask : ndarray, (S, S) bool
            From :meth:`mask_from_drawing`.
        label_values : dict, optional
            The panel's label menus, key -> chosen values (the region's ``where``).
        like_paths : list of str, optional
            Uploaded "like this" photos (the region's ``like``; kept in the app's work folder, so the
            region outlives Gradio's upload cache).
        exemplar_id : str, optional
            One exemplar id, "take this region from the exemplar I clicked" (the region's ``exemplars``).

        The filters given intersect (as in :class:`~pixelnn.options.Region`).

        Raises
        ------
        PixelNNError
            One line: no exemplar set chosen, a bad photo, an unknown id, or filters that leave no exemplar.
        """
        from pixelnn.options import Region
        from pixelnn.regions import load_mask

        mask = load_mask(np.asarray(mask), self.size, name="the painted region")
        where, paths = self._restrictions(label_values, like_paths)
        exemplars = [str(exemplar_id)] if exemplar_id else []
        if not (where or paths or exemplars):
            raise PixelNNError("give the region an exemplar set: pick label values, upload a 'like this' photo, or "
                               "click a pixel of an output and use 'from the exemplar I clicked'")
        region = Region(mask, where=where, exemplars=exemplars, like=[self._keep_photo(p) for p in paths])
        try:  # the set must not be empty (the pipeline checks again when it runs)
            self.pipe.allowed_positions(self.default_options().replace(where=region.where, exemplars=region.exemplars,
                                                                       like=region.like))
        except PixelNNError as e:
            raise PixelNNError(f"region ({printable(region_set_text(region))}): {e}") from None
        return region

    def _keep_photo(self, path: str) -> str:
        """A copy of an uploaded photo in the work folder (named by its content; never pruned)."""
        import hashlib

        data = Path(path).read_bytes()
        keep = self.work_dir / _KEEP
        keep.mkdir(exist_ok=True)
        out = keep / f"{hashlib.sha256(data).hexdigest()[:16]}-{Path(path).name}"
        if not out.exists():
            out.write_bytes(data)
        return str(out)

    def clicked_exemplar(self, result: Any, output: int, view_x: int, view_y: int) -> str:
        """The id of the exemplar that pixel (``view_x``, ``view_y``) of an enlarged output view came from."""
        from pixelnn.provenance import pixel_source

        return pixel_source(result, output, int(view_y) // self.scale, int(view_x) // self.scale).exemplar_id

    def editor_value(self, image: np.ndarray | None) -> dict[str, Any]:
        """The Regions editor's value with ``image`` (the stage-1 image or an output, (S, S, 3)) enlarged as
        its background and no strokes."""
        from pixelnn.visualize import enlarge

        bg = None if image is None else self.png_files({"paint": enlarge(np.asarray(image), self.scale)})["paint"]
        return {"background": bg, "layers": [], "composite": None}

    def regions_overlay(self, stage1: np.ndarray | None, regions: Sequence[Any]) -> np.ndarray:
        """The regions in their colours (:func:`region_colors`) over the stage-1 image (grey when none yet),
        enlarged to the page's view: a half-tone fill where a region wins (later regions over earlier ones)
        and a solid border."""
        from pixelnn.regions import border_pixels, region_map
        from pixelnn.visualize import enlarge

        base = np.full((self.size, self.size, 3), 200, np.uint8) if stage1 is None else np.asarray(stage1)[..., :3]
        out = base.astype(np.float32)
        region = region_map(regions, self.size) if regions else np.zeros((self.size, self.size), np.int16)
        edge = border_pixels(region)
        for r, colour in enumerate(region_colors(len(regions)), 1):
            inside = region == r
            out[inside] = 0.45 * out[inside] + 0.55 * colour
            out[inside & edge] = colour
        return enlarge(out.round().astype(np.uint8), self.scale)

    def regions_table(self, regions: Sequence[Any]) -> str:
        """A Markdown table of the regions: colour, number, pixels that it wins, and its exemplar set."""
        if not regions:
            return "No regions yet: the whole image uses the exemplars of *Restrict the exemplars*."
        from pixelnn.regions import region_map

        region = region_map(regions, self.size)
        rows = ["| region | pixels | exemplar set |", "|---|---|---|"]
        for r, (reg, colour) in enumerate(zip(regions, region_colors(len(regions))), 1):
            rows.append(f"| <span style='color:#%02x%02x%02x'>&#9632;</span>&nbsp;{r} | {int((region == r).sum())} | "
                        f"{region_set_text(reg)} |" % tuple(int(v) for v in colour))
        return ("Later regions win where they overlap; pixels outside every region use the exemplars of "
                "*Restrict the exemplars*.\n\n" + "\n".join(rows))

    def regions_summary(self, result: Any) -> str:
        """A Markdown line about a result's regions (empty without): each region's set, the pixels it got and
        its exemplars retrieved, which regions reuse their few exemplars, and how many outputs were dropped
        because the default set retrieved too few."""
        regions = result.options.regions
        if result.region is None or not regions:
            return ""
        sets = result.region_neighbours
        parts = [f"default set {int((result.region == 0).sum())} px, {len(sets[0])} exemplar(s)"]
        parts += [f"{r} ({region_set_text(reg)}) {int((result.region == r).sum())} px, {len(sets[r])} exemplar(s)"
                  for r, reg in enumerate(regions, 1)]
        asked = len(self.pipe.output_specs(result.options))
        dropped = asked - len(result.outputs)
        needed = max(max(s.ranks) for s in result.specs) + 1
        few = [str(r) for r in range(1, len(sets)) if 0 < len(sets[r]) < needed and (result.region == r).any()]
        note = (f" Region(s) {', '.join(few)} have fewer exemplars than the outputs use: every output reuses them."
                if few else "")
        note += (f" {dropped} of the {asked} outputs were dropped: their exemplar sets use more neighbours than the "
                 f"default set retrieved." if dropped > 0 else "")
        return f"Regions ({len(regions)}): " + "; ".join(parts) + "." + note

    def resolved(self, options: Any) -> Any:
        """``options`` as the pipeline runs them: the mode's defaults and the pipeline's descriptor filled in."""
        return self.pipe.check_options(options)

    def mode_info(self, mode: str) -> str:
        """One line about composition mode ``mode``: its summary and its defaults of the fields left empty."""
        from pixelnn.modes import get_mode

        m = get_mode(mode)
        defaults = ", ".join(f"{k} {v}" for k, v in m.defaults.items() if v is not None)
        return f"{m.name}: {m.summary}. Empty fields below take its defaults: {defaults}."

    # ------------------------------------------------------------------ synthesis
    def filters(self, label_values: dict[str, Sequence[str] | None] | None = None,
                like_paths: Sequence[str] | None = None) -> tuple[dict[str, list[str]] | None, list[np.ndarray] | None]:
        """``where`` and "like these" photos (arrays) from the page's label menus and uploads."""
        where, paths = self._restrictions(label_values, like_paths)
        like = [self.read_photo(p) for p in paths]
        return where or None, like or None

    def synthesize(self, x: np.ndarray, options: Any = None, like_photos: Sequence[np.ndarray] | None = None,
                   **overrides: Any) -> Any:
        """Run the pipeline on x with ``options`` (a SynthesisOptions; default :meth:`default_options`), on one of
        the ``workers`` (:class:`Batcher`, with other waiting requests of the same options when ``batch`` > 1);
        ``like_photos`` are "like these" photos as arrays, ``overrides`` change option fields.
        Returns the SynthesisResult (its ``options`` are the resolved ones that ran)."""
        options = self.default_options() if options is None else options
        if overrides:
            options = options.replace(**overrides)
        # requests that may share one pipeline.batch call: same options, no "like" photos, no regions
        key = None if like_photos or options.regions else options.to_json()
        return self._batcher.submit(key, (x, options, like_photos))

    def _run_group(self, requests: list[tuple[np.ndarray, Any, Any]]) -> list[Any]:
        """Run one group of requests (the batcher's worker call): one pipeline call, or one batch call."""
        with self._count_lock:
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
        try:
            if len(requests) == 1:
                x, options, like_photos = requests[0]
                return [self.pipe(x, options, like_photos=like_photos)]
            return self.pipe.batch([x for x, _, _ in requests], requests[0][1])
        finally:
            with self._count_lock:
                self.active -= 1
                self.runs += len(requests)
                self.batches += 1

    def gallery(self, result: Any) -> list[tuple[np.ndarray, str]]:
        """The outputs in the result's order (best first by default) with captions ``"k: #1-3 7x7, 31.2 dB"``
        (output, exemplar ranks and window, 1-based, and the score when scored, :func:`pixelnn.ranking.score_text`)."""
        from pixelnn.ranking import score_text

        scores = result.faithfulness if result.faithfulness is not None else [float("nan")] * len(result.specs)
        texts = [score_text(v, result.score_kind) for v in scores]
        return [(result.outputs[o], f"{o + 1}: {_set_name(s.ranks)} {_window_short(s.window)}"
                 + (f", {texts[o]}" if texts[o] else "")) for o, s in enumerate(result.specs)]

    def summary(self, result: Any, source: str, seconds: float) -> str:
        """A Markdown paragraph: how many outputs, the timings and the resolved options that ran."""
        t = result.timings
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in t.items() if k != "total")
        return (f"{len(result.outputs)} outputs from the {source} in {seconds:.1f} s "
                f"(pipeline {t.get('total', 0):.2f} s: {steps}). Click an output to see where its pixels came from."
                f"\n\nOptions used: {options_line(result.options)}."
                + (f"\n\n{self.regions_summary(result)}" if result.region is not None else ""))

    # ------------------------------------------------------------------ provenance views
    def output_view(self, result: Any, output: int) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, str]], str]:
        """For output ``output``: the output and its correspondence map enlarged (VIEW_SIDE), the top
        contributing exemplars as (photo, caption) and a Markdown table of them."""
        from pixelnn.provenance import exemplar_ranks, format_labels, top_contributors
        from pixelnn.visualize import correspondence_map, enlarge, palette

        tops = top_contributors(result, output, self.pipe.library)
        ranks = exemplar_ranks(result.exemplar[output], result.neighbours)
        k = len(result.neighbours)
        cmap = correspondence_map(ranks, result.source_y[output], result.source_x[output], k)
        pal = palette(k)
        thumbs = []
        rows = ["| colour | exemplar | rank | share of pixels | labels |", "|---|---|---|---|---|"]
        for c in tops:
            photo = np.asarray(self.pipe.library.take("photos", [c.library_position])[0]).copy()
            photo[:3], photo[-3:], photo[:, :3], photo[:, -3:] = (pal[c.rank],) * 4  # framed in its map colour
            if len(thumbs) < TOP_CONTRIBUTORS:
                thumbs.append((photo, f"{c.exemplar_id}: {100 * c.share:.0f}% ({format_labels(c.labels)})"))
            colour = "#%02x%02x%02x" % tuple(int(v) for v in pal[c.rank])
            rows.append(f"| <span style='color:{colour}'>&#9632;</span> | `{c.exemplar_id}` | {c.rank + 1} | "
                        f"{100 * c.share:.1f}% ({c.pixels} px) | {format_labels(c.labels)} |")
        spec = result.specs[output]
        head = (f"**Output {output + 1}** of {len(result.outputs)}: window {spec.window_name}, exemplar set "
                f"{_set_name(spec.ranks)}, mean pixel similarity "
                f"{float(result.similarity[output].mean()):.3f}. Click a pixel of the output or the map.\n\n")
        return (enlarge(result.outputs[output], self.scale), enlarge(cmap, self.scale), thumbs,
                head + "\n".join(rows))

    def hover_html(self, result: Any, output: int) -> str:
        """An empty element carrying output ``output``'s per-pixel sources as JSON (``data-map``), read by the
        page's hover script: ``{"size", "ids": [K], "rank": [S*S], "sy": [S*S], "sx": [S*S]}``."""
        import html
        import json

        from pixelnn.provenance import exemplar_ranks

        ranks = exemplar_ranks(result.exemplar[output], result.neighbours)
        data = {"size": int(ranks.shape[0]), "output": int(output) + 1, "ids": list(result.neighbour_ids),
                "rank": ranks.ravel().tolist(), "sy": result.source_y[output].ravel().tolist(),
                "sx": result.source_x[output].ravel().tolist()}
        return f"<div id='pixel-map' data-map='{html.escape(json.dumps(data, separators=(',', ':')), quote=True)}'></div>"

    def pixel_view(self, result: Any, output: int, view_x: int, view_y: int) -> tuple[str, np.ndarray, np.ndarray]:
        """A click at (``view_x``, ``view_y``) on an enlarged view of output ``output``: a Markdown line about
        the source, the source exemplar's photo with the pixel marked, and the output with the pixel marked."""
        from pixelnn.provenance import format_labels, pixel_source
        from pixelnn.visualize import mark_pixel

        y, x = int(view_y) // self.scale, int(view_x) // self.scale
        src = pixel_source(result, output, y, x, self.pipe.library)
        photo = np.asarray(self.pipe.library.take("photos", [src.library_position])[0])
        region = "" if result.region is None else (
            f" (region {int(result.region[y, x])})" if result.region[y, x] else " (the default set)")
        text = (f"Pixel (y={y}, x={x}){region} of output {output + 1} came from exemplar **`{src.exemplar_id}`** "
                f"(rank {src.rank + 1}; {format_labels(src.labels)}) at (y={src.source_y}, x={src.source_x}); "
                f"descriptor similarity {src.similarity:.3f}.")
        return (text, mark_pixel(photo, src.source_y, src.source_x, self.scale),
                mark_pixel(result.outputs[output], y, x, self.scale))

    # ------------------------------------------------------------------ downloads
    def _new_dir(self, name: str) -> Path:
        self._prune()
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work_dir))

    def _prune(self, max_age_s: float = 3600.0) -> None:
        """Remove download folders older than an hour (Gradio has copied them to its own cache by then)."""
        now = time.time()
        for d in self.work_dir.iterdir():
            if (d.is_dir() and d.name != _KEEP and not d.name.startswith(_CACHE)
                    and now - d.stat().st_mtime > max_age_s):
                shutil.rmtree(d, ignore_errors=True)

    def png_files(self, images: dict[str, np.ndarray]) -> dict[str, str]:
        """Write images as PNGs into a new folder (atomically) and return their paths, for the page.

        The page gets files rather than arrays: Gradio copies a returned file into its cache atomically,
        whereas it rewrites the cache file of a returned array in place, which a browser still fetching the
        same image of an earlier, identical request could then read truncated. The folder is new and no one
        reads it before this returns, so the files are written in place, by ``RESULT_WRITERS`` threads at
        ``RESULT_PNG_LEVEL``, as :func:`pixelnn.pipeline.save_result` writes a result's.
        """
        from concurrent.futures import ThreadPoolExecutor

        from pixelnn.io import save_image
        from pixelnn.pipeline import RESULT_PNG_LEVEL, RESULT_WRITERS

        d = self._new_dir("page")
        paths = {name: str(d / f"{name}.png") for name in images}
        with ThreadPoolExecutor(RESULT_WRITERS, thread_name_prefix="pixelnn-page") as pool:
            jobs = [pool.submit(save_image, paths[name], np.asarray(image), atomic=False,
                                compress_level=RESULT_PNG_LEVEL) for name, image in images.items()]
            for job in jobs:  # every file written (or its error raised) before the page gets the paths
                job.result()
        return paths

    def download(self, result: Any, output: int | None = None, photo: np.ndarray | None = None) -> Path:
        """Zip of one output (``output``) or all outputs (None) with their correspondences, as ``save_result`` writes them."""
        from pixelnn.io import zip_dir
        from pixelnn.pipeline import save_result, subset_result

        name = "pixelnn-all" if output is None else f"pixelnn-output-{int(output) + 1:03d}"
        part = result if output is None else subset_result(result, [output])
        d = self._new_dir(name)
        folder = save_result(part, d / name, self.pipe.library, photo=photo)
        if output is not None:  # keep the output's number in its file names
            for f in sorted(folder.glob("*_001.png")):
                f.rename(f.with_name(f.name.replace("_001", f"_{int(output) + 1:03d}")))
            import json

            from pixelnn.io import read_json

            m = read_json(folder / "manifest.json", "synthesis manifest", expect=dict)
            m["outputs"][0]["file"] = f"output_{int(output) + 1:03d}.png"
            (folder / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
        return zip_dir(folder, d / f"{name}.zip")


def options_line(options: Any) -> str:
    """The settings of (resolved) options in one line, e.g. ``mode coherent, color rgb, vote_size 3, ...``."""
    o = options
    sets = "the authors' 18" if o.sets is None else ",".join(_set_name([r - 1 for r in s]).lstrip("#") for s in o.sets)
    parts = [f"mode **{o.mode}**", f"color {o.color}", f"top_k {o.top_k}",
             "windows " + ",".join("whole" if w is None else str(w) for w in o.windows), f"sets {sets}"]
    parts += [f"{k} {getattr(o, k)}" for k in ("patch_size", "vote_size", "highpass_sigma", "chroma_weight")
              if getattr(o, k) is not None]
    parts += [f"descriptor {o.descriptor}" + ("" if o.pca_dims is None else
                                               f" ({'full' if o.pca_dims == 0 else o.pca_dims} dims)")]
    parts += [f"num_outputs {o.num_outputs} (seed {o.seed})"] if o.num_outputs is not None else []
    parts += [f"search {o.search}"] if o.search is not None else []
    parts += [f"autocast {o.autocast}"] if o.autocast != "auto" else []  # what ran, once the pipeline resolved it
    parts += [f"order {o.order}"]
    parts += ["where " + "; ".join(f"{k}={' or '.join(v)}" for k, v in o.where)] if o.where else []
    parts += [f"like {len(o.like)} photo(s)"] if o.like else []
    parts += [f"{len(o.regions)} region(s)"] if o.regions else []
    return ", ".join(parts)


def region_set_text(region: Any) -> str:
    """A region's exemplar set in words, e.g. ``kind=blob or spot; exemplar a003; like shoe.png``."""
    parts = [f"{k}={' or '.join(v)}" for k, v in region.where]
    if region.exemplars:
        parts.append(f"exemplar{'s' if len(region.exemplars) > 1 else ''} {', '.join(region.exemplars)}")
    if region.like:  # the kept copies' names without their content-hash prefix
        parts.append("like " + ", ".join(re.sub(r"^[0-9a-f]{16}-", "", Path(p).name) for p in region.like))
    return "; ".join(parts)


def region_colors(n: int) -> np.ndarray:
    """(n, 3) uint8: the colours of regions 1..n in the overlay and the list (fixed, well separated)."""
    from pixelnn.visualize import palette

    return palette(n + 3)[3:] if n else np.zeros((0, 3), np.uint8)


class Oversized:
    """What :func:`bound_canvas` hands the app instead of a page image over the pixel limit: its size only,
    the pixels never decoded. ``width``/``height`` are None when Pillow's own bomb guard refused the header."""

    def __init__(self, width: int | None = None, height: int | None = None):
        self.width, self.height = width, height

    def __repr__(self) -> str:
        return f"Oversized({self.width}, {self.height})"


def _too_many_pixels(what: str, w: int | None, h: int | None, max_pixels: int) -> PixelNNError:
    size = "more pixels than Pillow opens" if w is None else f"{w}x{h} pixels ({w * h / 1e6:.1f} MP)"
    return PixelNNError(f"{what} is {size}; the limit is {max_pixels / 1e6:.1f} MP")


def _canvas(value: Any, what: str, max_pixels: int | None = None) -> np.ndarray:
    """A page image (the sketch pad's canvas, a region layer) as an (H, W) or (H, W, 1|3|4) numeric array; a
    one-line PixelNNError for anything else (the page sends such arrays, a hand-made request may not) and for
    an image over ``max_pixels`` (an :class:`Oversized` from :func:`bound_canvas`, or an array)."""
    if isinstance(value, Oversized):
        raise _too_many_pixels(what, value.width, value.height, max_pixels or 0)
    try:
        a = np.asarray(value)
    except (ValueError, TypeError):  # ragged lists
        a = None
    if a is None or a.dtype.kind not in "biuf" or a.ndim not in (2, 3) or a.size == 0 or \
            (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        got = type(value).__name__ + ("" if a is None else f" of shape {a.shape}, {a.dtype}")
        raise PixelNNError(f"{what} must be an (H, W) or (H, W, 1|3|4) image, got a {got}")
    if max_pixels and a.shape[0] * a.shape[1] > max_pixels:
        raise _too_many_pixels(what, a.shape[1], a.shape[0], max_pixels)
    return a


def image_size(file: Any) -> tuple[int, int] | Oversized | None:
    """(width, height) of an image file (a Gradio ``FileData``, a path or bytes) from its header alone, an
    :class:`Oversized` without a size when Pillow's bomb guard refuses even to open it, or None when it is no
    image Pillow opens (left to the caller's decoder, which then says so)."""
    import io
    import warnings

    from PIL import Image

    src = io.BytesIO(file) if isinstance(file, (bytes, bytearray, memoryview)) else getattr(file, "path", file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the size is what we want
            with Image.open(src) as im:
                return im.size
    except Image.DecompressionBombError:
        return Oversized()
    except Exception:  # noqa: BLE001 (not an image, unreadable: the decoder reports it)
        return None


#: Most layers an image editor's blob upload may name (``accept_blobs``): Gradio makes a list as long as the
#: index a request gives (an index of 10**9: 8 GB of list from a 500-byte request).
MAX_EDITOR_LAYERS = 16
#: Bytes of canvases an image editor keeps for values not yet submitted (``blob_storage``, which Gradio never
#: empties for an abandoned canvas): the oldest go first. A 384 x 384 canvas is at most 0.6 MB a layer.
MAX_EDITOR_BLOB_BYTES = 256 * 2**20


def _blob_bytes(entry: Any) -> int:
    parts = [getattr(entry, "background", None), getattr(entry, "composite", None), *getattr(entry, "layers", [])]
    return sum(len(b) for b in parts if b)


def bound_canvas(component: Any, max_pixels: int) -> Any:
    """Make a Gradio image editor (``gr.Sketchpad``, ``gr.ImageEditor``) refuse images over ``max_pixels``
    before decoding them: each image of its value (background, layers, composite) is measured from its header
    (:func:`image_size`) and, when too large, handed to the app as an :class:`Oversized` instead of an array
    (:func:`_canvas` turns it into a one-line error). Without this Gradio decodes whatever canvas a request
    names (a 36 MP one: 412 MB of peak memory). The editor's blob uploads (``accept_blobs``, the canvases the
    page sends ahead of a submit) are bounded too: a layer index over :data:`MAX_EDITOR_LAYERS` is a 400, and
    the canvases kept take at most :data:`MAX_EDITOR_BLOB_BYTES` (oldest dropped). Returns ``component``."""
    from starlette.exceptions import HTTPException

    convert = component.convert_and_format_image
    accept = component.accept_blobs

    def bounded_accept(data: Any) -> Any:
        fields = getattr(data, "data", None)
        fields = fields if isinstance(fields, dict) else {}
        index = fields.get("index")
        if fields.get("type") == "layer" and index not in (None, "", "null"):
            try:
                ok = 0 <= int(index) < MAX_EDITOR_LAYERS
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise HTTPException(400, f"layer index must be 0-{MAX_EDITOR_LAYERS - 1}")
        result = accept(data)
        store, newest = component.blob_storage, fields.get("id")
        total = sum(_blob_bytes(v) for v in store.values())
        for key in list(store):
            if total <= MAX_EDITOR_BLOB_BYTES:
                break
            if key != newest:
                total -= _blob_bytes(store.pop(key))
        return result

    bounded_accept._is_server_fn = True  # what Gradio's component_server route asks of a server function
    component.accept_blobs = bounded_accept

    def bounded(file: Any, *args: Any, **kwargs: Any) -> Any:
        if file is not None:
            size = image_size(file)
            if isinstance(size, Oversized):
                return size
            if size is not None and size[0] * size[1] > max_pixels:
                return Oversized(*size)
        return convert(file, *args, **kwargs)

    component.convert_and_format_image = bounded
    return component


def _values(what: str, value: Any) -> list:
    """A page list (a label menu's choices, uploaded paths): None -> [], one string -> [it], a list or tuple as is;
    anything else is a one-line PixelNNError."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise PixelNNError(f"{what}: expected a list, got {type(value).__name__}")
    return list(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _number(value: Any, name: str, integer: bool = False) -> int | float | None:
    """A page number field: empty -> None; an integer field refuses fractions (one-line PixelNNError)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        f = float(value)
    except OverflowError:  # an integer beyond float range
        raise PixelNNError(f"{name} must be a finite number, got {str(value)[:20]}...") from None
    except (TypeError, ValueError):
        raise PixelNNError(f"{name} must be a number, got {value!r}") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise PixelNNError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if f != int(f):
            raise PixelNNError(f"{name} must be a whole number, got {value!r}")
        return int(f)
    return f


def _window_short(window: int | None) -> str:
    return "whole" if window is None else f"{window}x{window}"


def _set_name(ranks: Sequence[int]) -> str:
    """0-based neighbour ranks -> ``"#2"`` or ``"#1-5"`` (1-based)."""
    r = [int(v) + 1 for v in ranks]
    if len(r) > 1 and r == list(range(r[0], r[-1] + 1)):
        return f"#{r[0]}-{r[-1]}"
    return "#" + "+".join(map(str, r))



# ====================================================================== workers and batches
class _Request:
    __slots__ = ("key", "payload", "taken", "done", "result", "error")

    def __init__(self, key: Any, payload: Any):
        self.key, self.payload = key, payload
        self.taken = False
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Batcher:
    """Runs requests on at most ``workers`` threads at once, grouping waiting requests of one key into batches.

    Every caller of :meth:`submit` (one thread per request, as Gradio runs them) queues its request, then, until
    its request is taken, takes a worker slot and runs the oldest waiting request together with up to
    ``batch - 1`` later ones of the same key (``key=None``: never grouped). A caller may so run other callers'
    requests; each gets its own result or exception back. Nothing waits to fill a batch: batches form only
    from requests that are already waiting, so an idle server answers as fast as with no batching.

    Parameters
    ----------
    run : callable
        ``run(payloads) -> results``, one result per payload, in order.
    workers, batch : int
        Concurrent ``run`` calls, and the most payloads per call.
    """

    def __init__(self, run: Any, workers: int = 1, batch: int = 1):
        self.run, self.batch = run, max(1, int(batch))
        self._slots = threading.Semaphore(max(1, int(workers)))
        self._cond = threading.Lock()
        self._waiting: list[_Request] = []

    def submit(self, key: Any, payload: Any) -> Any:
        """Run ``payload`` (grouped with others of ``key``) and return its result, or raise its exception."""
        req = _Request(key, payload)
        with self._cond:
            self._waiting.append(req)
        while True:
            with self._cond:
                if req.taken:
                    break
            with self._slots:
                group = self._take()
                if group:
                    self._run(group)
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def _take(self) -> list[_Request]:
        """The oldest waiting request and up to ``batch - 1`` later ones of its key, marked taken."""
        with self._cond:
            if not self._waiting:
                return []
            first = self._waiting[0]
            group = [first] if first.key is None else [r for r in self._waiting if r.key == first.key][:self.batch]
            for r in group:
                r.taken = True
                self._waiting.remove(r)
            return group

    def _run(self, group: list[_Request]) -> None:
        try:
            results = self.run([r.payload for r in group])
            for r, res in zip(group, results):
                r.result = res
        except BaseException as e:  # every request of the group gets the error (each raises it in its own thread)
            if len(group) > 1 and isinstance(e, Exception):  # one bad request must not fail the others: retry alone
                for r in group:
                    try:
                        r.result = self.run([r.payload])[0]
                    except BaseException as e1:
                        r.error = e1
            else:
                for r in group:
                    r.error = e
        finally:
            for r in group:
                r.done.set()

# ====================================================================== the page
_CSS = """
#gallery .thumbnail-item img, #gallery img {image-rendering: pixelated}
#gallery .grid-container {grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
                          grid-auto-rows: auto !important; gap: 6px}
.pixelated img {image-rendering: pixelated}
#status {min-height: 2.5em}
"""


_CLICK_HINT = "Click a pixel of an output above to pick the exemplar it came from."

_PIXEL_HINT = ("Hover over the selected output or its map to see where each pixel came from; click to mark it "
               "on its source exemplar.")

# Hovering the selected output or its correspondence map shows each pixel's source in a tooltip, from the
# JSON that WebApp.hover_html puts in the page (no request per mouse move).
_HOVER_JS = """
<script>
document.addEventListener('scroll', () => {
  const tip = document.getElementById('pixelnn-tip');
  if (tip) tip.style.display = 'none';
}, true);
document.addEventListener('mousemove', (ev) => {
  let tip = document.getElementById('pixelnn-tip');
  const img = ev.target;
  const holder = document.getElementById('pixel-map');
  const onView = img && img.tagName === 'IMG' && (img.closest('#output-view') || img.closest('#corr-view'));
  if (!onView || !holder || !img.naturalWidth) { if (tip) tip.style.display = 'none'; return; }
  if (holder._src !== holder.dataset.map) { holder._parsed = JSON.parse(holder.dataset.map); holder._src = holder.dataset.map; }
  const d = holder._parsed;
  const r = img.getBoundingClientRect();
  const k = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
  const w = img.naturalWidth * k, h = img.naturalHeight * k;
  const x = Math.floor((ev.clientX - r.left - (r.width - w) / 2) / w * d.size);
  const y = Math.floor((ev.clientY - r.top - (r.height - h) / 2) / h * d.size);
  if (x < 0 || y < 0 || x >= d.size || y >= d.size) { if (tip) tip.style.display = 'none'; return; }
  if (!tip) {
    tip = document.createElement('div');
    tip.id = 'pixelnn-tip';
    tip.style.cssText = 'position:fixed;z-index:1000;pointer-events:none;background:#222;color:#fff;' +
      'font:12px/1.3 system-ui,sans-serif;padding:3px 6px;border-radius:4px;max-width:40em';
    document.body.appendChild(tip);
  }
  const i = y * d.size + x;
  tip.textContent = `output ${d.output} (y=${y}, x=${x}) <- ${d.ids[d.rank[i]]} (rank ${d.rank[i] + 1}) at (y=${d.sy[i]}, x=${d.sx[i]})`;
  tip.style.left = (ev.clientX + 14) + 'px';
  tip.style.top = (ev.clientY + 14) + 'px';
  tip.style.display = 'block';
});
</script>
"""


def build_ui(app: WebApp, title: str = "PixelNN") -> Any:
    """The Gradio page over ``app`` (a ``gr.Blocks``, queued: one synthesis at a time)."""
    import gradio as gr

    def _error(e: Exception) -> str:
        return f"**Error:** {e}"

    # Each page gets its own Gradio file cache inside the app's work dir. Gradio names a cached file by the hash
    # of its content and deletes every file a server handed out when that server stops; in the shared default
    # cache (/tmp/gradio) a stopping server (another process, or a page built earlier in this one) could thus
    # delete an identical image, say the stage-1 image of the same photo, that this page is still serving.
    cache = Path(tempfile.mkdtemp(prefix=_CACHE, dir=app.work_dir))
    # requests let into the app at once: each worker's batch (the batcher groups the waiting ones; the rest
    # wait in Gradio's queue, which shows each user their position)
    pipeline_limit = app.workers * app.batch
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # read by every component at construction, and by the server
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        result_state = gr.State(None)   # SynthesisResult of this browser session
        photo_state = gr.State(None)    # the photo it came from, if any
        output_state = gr.State(None)   # selected output index
        regions_state = gr.State([])    # the Regions panel's regions (pixelnn.options.Region), in order
        clicked_state = gr.State(None)  # id of the exemplar of the last pixel clicked
        source_state = gr.State(None)   # the input source of the last synthesis ("Synthesize again")

        gr.Markdown(f"# PixelNN: many outputs, and where every pixel came from\n{app.describe()}")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Photo", id="tab-photo"):
                        gr.Markdown(app.source_help("photo"))
                        photo_file = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="photo-file")
                        run_photo = gr.Button("Synthesize from photo", variant="primary", elem_id="run-photo")
                    with gr.Tab("Normal map" if app.task_name == "normals" else "Input image", id="tab-input"):
                        gr.Markdown(app.source_help("input"))
                        input_file = gr.File(label="Input image", file_types=["image"], type="filepath",
                                             elem_id="input-file")
                        run_input = gr.Button("Synthesize from input image", variant="primary", elem_id="run-input")
                    with gr.Tab("Sketch", id="tab-sketch", visible=app.takes_sketches):
                        gr.Markdown(app.source_help("sketch"))
                        sketch = gr.Sketchpad(label="Sketch", type="numpy", image_mode="RGBA",
                                              canvas_size=(CANVAS_SIDE, CANVAS_SIDE), fixed_canvas=True,
                                              brush=gr.Brush(default_size=3, colors=["#000000"], color_mode="fixed"),
                                              layers=False, elem_id="sketch")
                        bound_canvas(sketch, app.max_upload_pixels)
                        run_sketch = gr.Button("Synthesize from sketch", variant="primary", elem_id="run-sketch")
                with gr.Accordion("Restrict the exemplars", open=False):
                    label_menus = [gr.Dropdown(choices=[(f"{v} ({n})", v) for v, n in values.items()], multiselect=True,
                                               label=key, elem_id=f"label-{i}")
                                   for i, (key, values) in enumerate(app.labels.items())]
                    if not app.labels:
                        gr.Markdown("This library has no labels.")
                    like_files = gr.File(label=f"Only exemplars like these photos (up to {MAX_LIKE_PHOTOS})",
                                         file_count="multiple", file_types=["image"], type="filepath",
                                         elem_id="like-files")
                with gr.Accordion("Options", open=False, elem_id="options"):
                    page_options = _options_panel(app)
            with gr.Column(scale=2):
                status = gr.Markdown("Give an input on the left.", elem_id="status")
                with gr.Row():
                    input_view = gr.Image(label="Input x", type="numpy", format="png", interactive=False,
                                          elem_id="input-view", elem_classes=["pixelated"], height=200)
                    stage1_view = gr.Image(label="Stage 1: f(x)", type="numpy", format="png", interactive=False,
                                           elem_id="stage1-view", elem_classes=["pixelated"], height=200)
        gallery = gr.Gallery(label="Outputs (click one)", columns=12, format="png", allow_preview=False,
                             object_fit="contain", height="auto", elem_id="gallery")
        with gr.Row():
            output_view = gr.Image(label="Selected output (click a pixel)", type="numpy", format="png",
                                   interactive=False, elem_id="output-view", elem_classes=["pixelated"])
            corr_view = gr.Image(label="Correspondence map: colour = exemplar, shade = source position (click a pixel)",
                                 type="numpy", format="png", interactive=False, elem_id="corr-view",
                                 elem_classes=["pixelated"])
            source_view = gr.Image(label="Source exemplar, pixel marked", type="numpy", format="png",
                                   interactive=False, elem_id="source-view", elem_classes=["pixelated"])
        pixel_info = gr.Markdown(_PIXEL_HINT, elem_id="pixel-info")
        hover_data = gr.HTML("", elem_id="pixel-map-holder", padding=False)
        with gr.Row():
            with gr.Column(scale=2):
                contributors = gr.Gallery(label="Exemplars that contributed most", columns=TOP_CONTRIBUTORS // 2,
                                          format="png", allow_preview=False, height="auto", fit_columns=False,
                                          elem_id="contributors")
            with gr.Column(scale=3):
                contrib_table = gr.Markdown("", elem_id="contrib-table")
        with gr.Row():
            dl_one = gr.Button("Download this output (zip)", elem_id="download-one")
            dl_all = gr.Button("Download all outputs (zip)", elem_id="download-all")
            dl_file = gr.File(label="Download", interactive=False, visible=False, elem_id="download-file")
        side = app.size * app.scale
        d_blend = app.default_options().region_blend
        with gr.Accordion("Regions: paint a part of the output and choose its exemplars", open=False,
                          elem_id="regions"):
            gr.Markdown("Paint a region with the brush, give it its own exemplars (label values, a photo it should "
                        "look like, or the exemplar of the pixel you clicked above) and *Add region*; keep several "
                        "(later ones win where they overlap). The next synthesis, from any input, copies each region's "
                        "pixels only from its own exemplars.")
            with gr.Row():
                with gr.Column():
                    region_editor = gr.ImageEditor(
                        label="Paint the region", type="numpy", image_mode="RGBA",
                        sources=(), transforms=(), canvas_size=(side, side), fixed_canvas=True, layers=False,
                        format="png", brush=gr.Brush(default_size=max(4, side // 16), colors=[("#ff00ff", 0.6)],
                                                     color_mode="fixed"),
                        eraser=gr.Eraser(default_size=max(4, side // 16)), elem_id="region-editor")
                    bound_canvas(region_editor, app.max_upload_pixels)
                    with gr.Row():
                        paint_stage1 = gr.Button("Paint on stage 1", size="sm", elem_id="region-on-stage1")
                        paint_output = gr.Button("Paint on the selected output", size="sm", elem_id="region-on-output")
                with gr.Column():
                    gr.Markdown("**The region's exemplars**: label values and/or a photo they should look like")
                    region_menus = [gr.Dropdown(choices=[(f"{v} ({n})", v) for v, n in values.items()],
                                                multiselect=True, label=key, elem_id=f"region-label-{i}")
                                    for i, (key, values) in enumerate(app.labels.items())]
                    region_like = gr.File(label="Like this photo", file_count="multiple", file_types=["image"],
                                          type="filepath", elem_id="region-like")
                    add_region = gr.Button("Add region", variant="primary", elem_id="region-add")
                    clicked_info = gr.Markdown(_CLICK_HINT, elem_id="region-clicked")
                    add_clicked = gr.Button("Add region from the exemplar I clicked", elem_id="region-add-clicked")
                with gr.Column():
                    region_overlay = gr.Image(label="Regions over stage 1", type="numpy", format="png",
                                              interactive=False, elem_id="region-overlay", elem_classes=["pixelated"])
                    region_list = gr.Markdown(app.regions_table([]), elem_id="region-list")
                    with gr.Row():
                        remove_which = gr.Dropdown(choices=[], label="Region", elem_id="region-remove-which",
                                                   scale=1, min_width=80)
                        remove_region = gr.Button("Remove", size="sm", elem_id="region-remove")
                        clear_regions = gr.Button("Clear regions", size="sm", elem_id="region-clear")
                    page_options["region_blend"] = gr.Number(
                        value=d_blend, label="Blend the borders over (px; region_blend)", minimum=0,
                        info="spreads the colour step where two exemplar sets meet; 0: the bare copies",
                        elem_id="opt-region_blend")
                    region_run = gr.Button("Synthesize again with these regions", variant="primary",
                                           elem_id="region-run")

        # ------------------------------------------------------------ handlers
        def on_synthesize(source, photo_path, input_path, drawing, like_paths, regions, *values):
            t0 = time.perf_counter()
            n = len(PAGE_OPTIONS)
            skip = (gr.skip(),) * (len(synth_outputs) - 1)
            try:
                if source is None:
                    raise PixelNNError("synthesize from an input first (Photo, Input image or Sketch above)")
                options = app.options_from_page(dict(zip(PAGE_OPTIONS, values[:n])), dict(zip(app.labels, values[n:])),
                                                like_paths, regions=regions)
                x, photo = app.make_input(source, photo_path, input_path, drawing)
                result = app.synthesize(x, options)
            except PixelNNError as e:
                log.info("request refused: %s", e)
                gr.Warning(str(e))
                return (_error(e),) + skip
            except Exception as e:  # keep serving; say what happened
                log.exception("synthesis failed")
                return (_error(f"internal error ({type(e).__name__}: {e})"),) + skip
            from pixelnn.data.dataset import resize_nearest, to_rgb

            shown_input = to_rgb(resize_nearest(result.input[None], app.size))[0]
            items = app.gallery(result)
            files = app.png_files({"input": shown_input, "stage1": result.stage1,
                                   **{f"output_{o + 1:03d}": im for o, (im, _) in enumerate(items)}})
            shown = [(files[f"output_{o + 1:03d}"], caption) for o, (_, caption) in enumerate(items)]
            msg = app.summary(result, {"photo": "photo", "input": "input image", "sketch": "sketch"}[source],
                              time.perf_counter() - t0)
            return (msg, files["input"], files["stage1"], shown, result, photo, None,
                    None, None, None, _PIXEL_HINT, "", source, app.editor_value(result.stage1),
                    app.regions_overlay(result.stage1, regions), None, _CLICK_HINT)

        synth_outputs = [status, input_view, stage1_view, gallery, result_state, photo_state, output_state,
                         output_view, corr_view, source_view, pixel_info, hover_data, source_state, region_editor,
                         region_overlay, clicked_state, clicked_info]
        common = [photo_file, input_file, sketch, like_files, regions_state, *(page_options[k] for k in PAGE_OPTIONS),
                  *label_menus]
        for button, source in ((run_photo, "photo"), (run_input, "input"), (run_sketch, "sketch")):
            button.click(functools.partial(on_synthesize, source), inputs=common, outputs=synth_outputs,
                         concurrency_limit=pipeline_limit, concurrency_id="pipeline", api_name=f"synthesize_{source}",
                         # the full-page progress overlay animates at the display's frame rate: on a 2-core machine
                         # serving its own browser that animation costs the pipeline about a second
                         show_progress="minimal")
        region_run.click(on_synthesize, inputs=[source_state, *common], outputs=synth_outputs,
                         concurrency_limit=pipeline_limit, concurrency_id="pipeline", api_name=False, show_progress="minimal")

        # ------------------------------------------------------------ regions
        def on_add_region(drawing, regions, result, like_paths, clicked, use_clicked, *label_values):
            try:
                mask = app.mask_from_drawing(drawing)
                if use_clicked:
                    if not clicked:
                        raise PixelNNError("click an output, then a pixel of it, to pick the exemplar it came from")
                    region = app.region_from_page(mask, exemplar_id=clicked)
                else:
                    region = app.region_from_page(mask, dict(zip(app.labels, label_values)), like_paths)
            except PixelNNError as e:
                gr.Warning(str(e))
                return (_error(e),) + (gr.skip(),) * 5
            regions = [*regions, region]
            from pixelnn.regions import region_map

            won = int((region_map(regions, app.size) == len(regions)).sum())
            msg = (f"Region {len(regions)} added ({region_set_text(region)}, {won} pixels); it applies to the next "
                   f"synthesis: press *Synthesize*.")
            stage1 = None if result is None else result.stage1
            return (msg, regions, app.regions_table(regions), app.regions_overlay(stage1, regions),
                    gr.update(choices=[str(r) for r in range(1, len(regions) + 1)], value=None),
                    app.editor_value(stage1))

        region_outputs = [status, regions_state, region_list, region_overlay, remove_which, region_editor]
        add_inputs = [region_editor, regions_state, result_state, region_like, clicked_state]
        add_region.click(lambda *a: on_add_region(*a[:5], False, *a[5:]), [*add_inputs, *region_menus],
                         region_outputs, concurrency_limit=4, api_name=False, show_progress="minimal")
        add_clicked.click(lambda *a: on_add_region(*a[:5], True), add_inputs, region_outputs,
                          concurrency_limit=4, api_name=False, show_progress="minimal")

        def on_remove(regions, result, which, clear):
            if clear:
                regions, msg = [], "Regions cleared: the next synthesis uses one exemplar set for the whole image."
            else:
                if not which:
                    gr.Warning("choose the region to remove")
                    return (_error("choose the region to remove"),) + (gr.skip(),) * 4
                r = int(which)
                regions = [reg for i, reg in enumerate(regions, 1) if i != r]
                msg = f"Region {r} removed; {len(regions)} left (renumbered)."
            stage1 = None if result is None else result.stage1
            return (msg, regions, app.regions_table(regions), app.regions_overlay(stage1, regions),
                    gr.update(choices=[str(r) for r in range(1, len(regions) + 1)], value=None))

        remove_region.click(lambda r, res, w: on_remove(r, res, w, False), [regions_state, result_state, remove_which],
                            region_outputs[:5], concurrency_limit=4, api_name=False, show_progress="minimal")
        clear_regions.click(lambda r, res: on_remove(r, res, None, True), [regions_state, result_state],
                            region_outputs[:5], concurrency_limit=4, api_name=False, show_progress="minimal")

        def on_paint_on(result, k, which):
            if result is None:
                gr.Warning("synthesize first: the region is painted on the stage-1 image or an output")
                return gr.skip()
            if which == "output":
                if k is None:
                    gr.Warning("click an output first")
                    return gr.skip()
                return app.editor_value(result.outputs[k])
            return app.editor_value(result.stage1)

        paint_stage1.click(lambda r, k: on_paint_on(r, k, "stage1"), [result_state, output_state], region_editor,
                           concurrency_limit=4, api_name=False, show_progress="hidden")
        paint_output.click(lambda r, k: on_paint_on(r, k, "output"), [result_state, output_state], region_editor,
                           concurrency_limit=4, api_name=False, show_progress="hidden")

        def on_upload(path, kind):
            try:
                if kind == "photo":
                    app.read_photo(path)
                else:
                    app.read_input(path)
            except PixelNNError as e:
                gr.Warning(str(e))
                return _error(e)
            return f"{Path(path).name} is ready: press *Synthesize*."

        mode_fields = [page_options[k] for k in ("mode", *MODE_FIELDS)]
        page_options["mode"].change(lambda m: _mode_updates(app, m), page_options["mode"], mode_fields,
                                    concurrency_limit=4, api_name=False, show_progress="hidden")

        photo_file.upload(lambda p: on_upload(p, "photo"), photo_file, status, concurrency_limit=4,
                          api_name="check_photo")
        input_file.upload(lambda p: on_upload(p, "input"), input_file, status, concurrency_limit=4,
                          api_name="check_input")

        def on_select(result, evt: gr.SelectData):
            if result is None:
                return (gr.skip(),) * 8
            k = int(evt.index)
            try:
                out_img, cmap, thumbs, table = app.output_view(result, k)
            except PixelNNError as e:
                return (_error(e),) + (gr.skip(),) * 7
            files = app.png_files({f"output_{k + 1:03d}": out_img, f"correspondence_{k + 1:03d}": cmap,
                                   **{f"exemplar_{i + 1}": im for i, (im, _) in enumerate(thumbs)}})
            shown = [(files[f"exemplar_{i + 1}"], caption) for i, (_, caption) in enumerate(thumbs)]
            return (gr.skip(), files[f"output_{k + 1:03d}"], files[f"correspondence_{k + 1:03d}"], None, shown, table,
                    k, app.hover_html(result, k))

        gallery.select(on_select, result_state, [status, output_view, corr_view, source_view, contributors,
                                                 contrib_table, output_state, hover_data],
                       concurrency_limit=4, api_name=False)

        def on_pixel(result, k, evt: gr.SelectData):
            if result is None or k is None:
                return "Select an output first.", gr.skip(), gr.skip(), gr.skip(), gr.skip()
            try:
                text, src, marked = app.pixel_view(result, k, *evt.index[:2])
                clicked = app.clicked_exemplar(result, k, *evt.index[:2])
            except PixelNNError as e:
                return _error(e), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            files = app.png_files({"source": src, f"output_{k + 1:03d}": marked})
            return (text, files["source"], files[f"output_{k + 1:03d}"], clicked,
                    f"Exemplar you clicked: **`{clicked}`** (pixel of output {k + 1}).")

        for view in (output_view, corr_view):
            view.select(on_pixel, [result_state, output_state],
                        [pixel_info, source_view, output_view, clicked_state, clicked_info],
                        concurrency_limit=4, api_name=False)

        def on_download(result, k, photo, which):
            if result is None:
                gr.Warning("nothing to download yet: synthesize first")
                return gr.skip()
            if which == "one" and k is None:
                gr.Warning("click an output first")
                return gr.skip()
            return gr.update(value=str(app.download(result, k if which == "one" else None, photo=photo)), visible=True)

        dl_one.click(lambda r, k, p: on_download(r, k, p, "one"), [result_state, output_state, photo_state], dl_file,
                     concurrency_limit=1, concurrency_id="files", api_name=False)
        dl_all.click(lambda r, k, p: on_download(r, k, p, "all"), [result_state, output_state, photo_state], dl_file,
                     concurrency_limit=1, concurrency_id="files", api_name=False)
    demo.queue(default_concurrency_limit=1, max_size=app.max_queue)
    demo.pixelnn_cache = str(cache)
    return demo


def _mode_placeholder(app: WebApp, mode: str, name: str) -> str:
    """What an empty field runs with: the mode's default, for this task where it has one (coherent edges' chroma)."""
    from pixelnn.modes import get_mode

    task = getattr(getattr(app.pipe, "task", None), "name", None)
    m = get_mode(mode)
    v = m.task_defaults.get(task, {}).get(name, m.defaults.get(name))
    return f"the mode's ({'none' if v is None else v})"


def _mode_updates(app: WebApp, mode: str) -> tuple:
    """Gradio updates after the mode menu changed: its summary, and its defaults as the fields' placeholders."""
    import gradio as gr

    try:
        info = app.mode_info(mode)
    except PixelNNError as e:
        return (gr.update(info=str(e)),) + (gr.skip(),) * len(MODE_FIELDS)
    return (gr.update(info=info),) + tuple(gr.update(placeholder=_mode_placeholder(app, mode, k)) for k in MODE_FIELDS)


def _options_panel(app: WebApp) -> dict[str, Any]:
    """The Options panel's fields (inside an open ``gr.Blocks`` context), keyed by SynthesisOptions field."""
    import gradio as gr

    from pixelnn.modes import mode_names
    from pixelnn.options import COLORS, DESCRIPTORS, ORDERS, SEARCHES

    d = app.default_options()
    f: dict[str, Any] = {}
    f["mode"] = gr.Dropdown(choices=list(mode_names()), value=d.mode, label="Composition mode (mode)",
                            info=app.mode_info(d.mode), elem_id="opt-mode")
    with gr.Row():
        # an empty gr.Number sends 0: fields whose empty value must differ from 0 are text boxes
        f["num_outputs"] = gr.Number(value=None, precision=0, label="Number of outputs (num_outputs)",
                                     placeholder="all", info="empty or 0: all; else a random subset",
                                     elem_id="opt-num_outputs")
        f["seed"] = gr.Number(value=d.seed, precision=0, label="Seed of that subset (seed)", elem_id="opt-seed")
        f["color"] = gr.Radio(list(COLORS), value=d.color, label="Residuals copied in (color)",
                              info="rgb, or luminance only", elem_id="opt-color")
        f["order"] = gr.Radio(list(ORDERS), value=d.order, label="Output order (order)",
                              info="score: best first (faithfulness to the input + match similarity); grid: sets x windows",
                              elem_id="opt-order")
    with gr.Row():
        f["windows"] = gr.Textbox(value=",".join("whole" if w is None else str(w) for w in d.windows),
                                  label="Windows (windows)", info="sides in pixels or whole, e.g. 1,7,11,whole",
                                  elem_id="opt-windows")
        f["sets"] = gr.Textbox(value="", placeholder="the authors' 18 sets", label="Exemplar sets (sets)",
                               info="1-based neighbour ranks: 1,2,1-3,1-5 (1+4: members 1 and 4); empty: the authors' 18",
                               elem_id="opt-sets")
        f["top_k"] = gr.Number(value=d.top_k, precision=0, label="Neighbours retrieved (top_k)",
                               info="the authors' sets need 11", elem_id="opt-top_k")
    hints = {"patch_size": ("Patch side (patch_size)", "coherent matching; odd"),
             "vote_size": ("Vote side (vote_size)", "average over N x N matches; odd"),
             "highpass_sigma": ("High-pass sigma (highpass_sigma)", "copy the residual minus its blur; >= 0"),
             "chroma_weight": ("Chroma weight (chroma_weight)", "share of the colour cast copied, 0-1")}
    with gr.Row():
        for name, (label, info) in hints.items():
            f[name] = gr.Textbox(value="", label=label, placeholder=_mode_placeholder(app, d.mode, name),
                                 info=f"{info}; empty: the default", elem_id=f"opt-{name}")
    with gr.Row():
        f["descriptor"] = gr.Radio(list(DESCRIPTORS), value=d.descriptor, label="Pixel descriptor (descriptor)",
                                   info="VGG-16 hypercolumns, or the stage-1 network's features", elem_id="opt-descriptor")
        f["pca_dims"] = gr.Number(value=d.pca_dims, precision=0, label="PCA dims (pca_dims)",
                                  info="0: the full descriptor (another size fits a PCA once)", elem_id="opt-pca_dims")
        f["search"] = gr.Radio([SEARCH_DEFAULT, *SEARCHES], value=d.search or SEARCH_DEFAULT, label="Pixel search (search)",
                               info="exact, or coarse (coherent: labels on a half-resolution grid, faster); "
                                    "default: the mode's", elem_id="opt-search")
    assert set(f) == set(PAGE_OPTIONS) - {"region_blend"}  # that one is in the Regions panel
    return f


def launch(demo: Any, app: WebApp, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           quiet: bool = False, auth: tuple[str, str] | None = None) -> Any:
    """Start the server for ``demo`` (built over ``app``): no share link, no SSR node server, analytics off.

    Every request passes :class:`~pixelnn.web_limits.RequestLimits` first: upload bodies are capped at
    :func:`~pixelnn.web_limits.upload_cap` (``MAX_LIKE_PHOTOS`` files of ``app.max_upload_bytes``, the most one
    upload field takes, plus the multipart framing), other bodies at
    :data:`~pixelnn.web_limits.MAX_JSON_BYTES`, and nothing that would make the server fetch a URL gets through.
    ``auth`` ``(user, password)``: every page and API route asks for that login (Gradio's login form; a
    ``gradio_client.Client`` passes ``auth=``). ``block``: serve until interrupted (Ctrl-C, or SIGTERM under
    :func:`serve`), then close the server; else return at once (``demo.close()`` stops it).
    """
    from starlette.middleware import Middleware

    os.environ["GRADIO_TEMP_DIR"] = demo.pixelnn_cache  # the server's upload folder is the page's own cache
    limits = Middleware(RequestLimits, upload_bytes=upload_cap(app.max_upload_bytes, MAX_LIKE_PHOTOS),
                        json_bytes=MAX_JSON_BYTES)
    result = demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                         allowed_paths=[str(app.work_dir)], max_file_size=app.max_upload_bytes, show_error=False,
                         prevent_thread_lock=True, quiet=quiet, css=_CSS, head=_HOVER_JS, footer_links=[],
                         pwa=False, mcp_server=False, auth=[auth] if auth else None, app_kwargs={"middleware": [limits]},
                         num_workers=0)  # no static-file worker processes: every request passes the limits
    if block:
        try:
            while demo.is_running:
                time.sleep(0.2)
        except KeyboardInterrupt:
            log.info("stopping the server")
        finally:
            demo.close()
    return result


@contextlib.contextmanager
def _sigterm_interrupts():
    """Within the block, SIGTERM (``kill``, a service manager's stop) raises KeyboardInterrupt in the main
    thread as Ctrl-C does, so the server stops through its ``finally`` clauses (Python's default handler would
    end the process at once, leaving its temporary folder behind). Outside the main thread: nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, library_dir: str | Path | None = None,
          max_upload_bytes: int = MAX_UPLOAD_BYTES, max_upload_pixels: int = MAX_UPLOAD_PIXELS,
          threads: int | None = None, device: str = "auto", workers: int = DEFAULT_WORKERS, batch: int = 1,
          max_queue: int = MAX_QUEUE, auth: tuple[str, str] | None = None) -> None:
    """Load a model and its library and serve the web app until interrupted (Ctrl-C or SIGTERM).

    ``device`` is where the models and matching run: ``auto`` (CUDA when there), ``cpu``, ``cuda[:N]`` or
    ``mps`` (:func:`pixelnn.devices.resolve_device`). ``workers`` syntheses run at once, each taking up to
    ``batch`` waiting requests of the same options; ``max_queue`` more may wait (see :class:`WebApp`). With
    ``threads`` unset, the CPU's cores are shared out between the workers (``torch.set_num_threads``).
    ``auth`` ``(user, password)`` requires that login; a ``host`` beyond loopback without it logs a one-line
    warning (anyone on the network could use the app).

    The server keeps its files in one temporary folder, ``$TMPDIR/pixelnn-web-PID-*``
    (:class:`~pixelnn.web_limits.TempRoot`): the app's downloads and the page's Gradio cache
    (``GRADIO_TEMP_DIR``, set for this server and restored after). It is removed when the server stops, and at
    the next start if the server was killed.
    """
    if importlib.util.find_spec("gradio") is None:
        raise PixelNNError("the web app needs gradio: install the web extra (pip install -e '.[web]', "
                           "or run scripts/install.sh)")
    import torch

    from pixelnn.pipeline import PixelNNPipeline

    if threads:
        torch.set_num_threads(threads)
    elif workers > 1:  # each worker's convolutions get their share of the cores, not all of them each
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    t0 = time.perf_counter()
    pipe = PixelNNPipeline.from_model_dir(model_dir, library_dir=library_dir, device=device)
    app = WebApp(pipe, max_upload_bytes=max_upload_bytes, max_upload_pixels=max_upload_pixels, workers=workers,
                 batch=batch, max_queue=max_queue)
    saved = os.environ.get("GRADIO_TEMP_DIR")
    # Gradio reads it when first imported (route_utils.DEFAULT_TEMP_DIR: its vibe-edit history, video files) and
    # as each component is made; build_ui and launch then point it at the page's own cache in app.work_dir
    os.environ["GRADIO_TEMP_DIR"] = str(app.temp_root.path / "gradio")
    try:
        with _sigterm_interrupts():
            warm_up(app)
            log.info("model loaded on %s in %.1f s; serving on http://%s:%d", pipe.device, time.perf_counter() - t0,
                     host, port)
            if not is_loopback(host):
                if auth is None:
                    log.warning("http://%s:%d is reachable from the network without authentication: anyone who "
                                "can reach this machine can use the app; pass --auth USER:PASSWORD (or set "
                                "PIXELNN_AUTH) to require a login", host, port)
                else:
                    log.info("http://%s:%d is reachable from the network; logins travel unencrypted (plain HTTP): "
                             "serve through an HTTPS proxy on networks you do not trust", host, port)
            launch(build_ui(app), app, host=host, port=port, auth=auth)
    except KeyboardInterrupt:
        log.info("server stopped")
    finally:
        app.close()
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved


def warm_up(app: WebApp) -> None:
    """Run the pipeline once on a blank input so the first user does not pay for lazy loading."""
    cfg = app.pipe.regressor.config
    x = np.full((cfg.input_size, cfg.input_size, cfg.in_channels), 255, np.uint8)
    try:
        app.pipe(x, num_outputs=1, seed=0)
    except PixelNNError as e:  # e.g. a library too small for the default sets: the app will say so per request
        log.warning("warm-up skipped: %s", e)
