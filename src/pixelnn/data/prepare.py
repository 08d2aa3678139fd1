"""``pixelnn prepare``: turn a photo collection (folder or zip) or a pix2pix paired set into a dataset.

See :func:`prepare_dataset`. The folder/zip conventions (labels from folders, ``train``/``val``/
``test`` folders, CelebA identities) are described in :mod:`pixelnn.data.sources`; image decoding
and fitting in :mod:`pixelnn.data.images`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pixelnn.config import MAX_HED_SIDE, MAX_THREADS, TaskConfig
from pixelnn.data.dataset import REPLACES as DATASET_REPLACES
from pixelnn.data.dataset import SPLITS, SplitData, assign_split, write_dataset
from pixelnn.data.images import (BAD_NAME, CORRUPT, DEFAULT_MAX_PIXELS, FITS, NO_FACE, SKIP_REASONS, TOO_LARGE,
                                 UNSAFE_PATH, UnusableImage, decode_image, fit_from_borders, fit_image,
                                 has_white_border, is_grayscale, pil_limits, split_pair)
from pixelnn.data.sources import DEFAULT_MAX_FILE_BYTES, Layout, Source, open_source, plan_layout
from pixelnn.errors import PixelNNError, printable
from pixelnn.io import check_replaceable, recover

log = logging.getLogger(__name__)

#: Images may be enlarged by at most this factor to reach the output size (with a warning and a
#: count in the report); smaller ones are skipped as "too small". 1.1 lets the 89x109 CelebA crops
#: through at the default size 96 (x1.08); pass ``max_upscale=1.0`` to never enlarge.
DEFAULT_MAX_UPSCALE = 1.1
AUTO_FIT_SAMPLES = 50
DERIVE_BATCH = 512
#: At most this many photo pixels per batch of input derivation (so fewer than DERIVE_BATCH photos of more than
#: 128 x 128: an HED probability map is 4 bytes a pixel).
DERIVE_PIXELS = DERIVE_BATCH * 128 * 128
#: The fitted photos (and inputs) that prepare holds until it writes the dataset may take at most this share of
#: the machine's memory (:func:`memory_limit`); its peak, when it stacks a split, is about twice what it holds.
MAX_MEMORY_FRACTION = 0.4
#: Torch threads of ``prepare --task normals`` unless told (``threads``): measured faster than 2 on 2 cores.
DEFAULT_DERIVE_THREADS = 1
#: How ``limit`` draws its subset: ``random`` (a seeded sample, stratified by the first label) or ``first`` (the
#: first usable images in sorted path order, as before).
SAMPLES = ("random", "first")
#: Seed of the ``random`` sample unless told.
DEFAULT_SAMPLE_SEED = 0
#: The summary lists at most this many label values of what was kept (the most frequent).
SHOWN_LABEL_VALUES = 8
#: The manifest records the kept count of every value of the stratifying label when there are at most this many.
RECORDED_LABEL_VALUES = 64


@dataclass
class PrepareReport:
    """What :func:`prepare_dataset` did.

    Attributes
    ----------
    out_dir : Path
        The dataset written.
    source : str
        The source path; ``source_kind`` is ``"folder"`` or ``"zip"``.
    counts : dict
        Images per split (``train``, ``val``, ``test``).
    skipped : dict
        Reason -> count, reasons among :data:`pixelnn.data.images.SKIP_REASONS`; only non-zero ones.
    label_keys : list of str
        Label names of the records, in folder order.
    fit : str
        The fit used (``pad`` or ``crop``); ``fit_requested`` is what was asked (maybe ``auto``).
    task : TaskConfig
        The task as stored in the manifest (``input_channels`` may have been set to 1 for paired
        grayscale inputs).
    split_source : str
        ``"hash"`` (assign_split on the ids) or ``"folders"`` (train/val/test folders).
    found : int
        Image files found in the source (before ``limit``).
    upscaled : int
        Images enlarged (by at most ``max_upscale``) to reach the output size.
    seconds : float
        Wall time.
    subset : dict
        How the images were chosen, as recorded in the manifest (``subset``): ``method`` (``all``, ``random`` or
        ``first``), ``seed``, ``limit``, ``source_images``, ``stratified_by`` (the label key of a random sample, or
        None), ``kept``, ``label_key`` (the first label key, or None) and, with one, ``label_values_kept``,
        ``label_values_source`` and (up to 64 values) ``label_counts``.
    kept_labels : dict
        Value of the first label key (``subset["label_key"]``) -> images kept with it (``"(none)"`` for
        images without that label); empty when the source has no labels.
    source_label_values : int
        How many values that label takes over the whole source (0 without labels).
    """

    out_dir: Path
    source: str
    source_kind: str
    counts: dict[str, int]
    skipped: dict[str, int]
    label_keys: list[str]
    fit: str
    fit_requested: str
    task: TaskConfig
    split_source: str
    found: int
    upscaled: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    subset: dict[str, Any] = field(default_factory=dict)
    kept_labels: dict[str, int] = field(default_factory=dict)
    source_label_values: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """A short human-readable summary (a few lines)."""
        c = self.counts
        lines = [f"prepared {self.total} {self.task.name} pairs in {self.out_dir} "
                 f"(train {c.get('train', 0)}, val {c.get('val', 0)}, test {c.get('test', 0)}) "
                 f"from {self.source_kind} {self.source} in {self.seconds:.1f} s",
                 f"photos {self.task.size}x{self.task.size} fit={self.fit}"
                 + (" (auto)" if self.fit_requested == "auto" else "")
                 + f", inputs {self.task.input_size}x{self.task.input_size}x{self.task.input_channels}"
                 + f", split from {self.split_source}"
                 + (f", labels: {', '.join(self.label_keys)}" if self.label_keys else ", no labels")]
        skipped = ", ".join(f"{k} {v}" for k, v in self.skipped.items() if v)
        lines.append(f"skipped: {skipped}" if skipped else "skipped: none")
        if self.upscaled:
            lines[-1] += f"; {self.upscaled} slightly enlarged"
        sub = self.subset
        if sub.get("method") in SAMPLES:
            how = (f"a random sample (seed {sub['seed']}" + (f", stratified by {sub['stratified_by']}"
                                                            if sub.get("stratified_by") else "") + ")"
                   if sub["method"] == "random" else "the first usable images in path order")
            lines.append(f"subset: {self.total} of {sub['source_images']} images (--limit {sub['limit']}), {how}")
        if self.kept_labels:
            lines.append(f"kept by {sub.get('label_key')}: {label_distribution(self.kept_labels)}"
                         + (f" ({len(self.kept_labels)} of {self.source_label_values} values)"
                            if len(self.kept_labels) < self.source_label_values else ""))
        return "\n".join(lines)


def label_distribution(counts: dict[str, int], shown: int = SHOWN_LABEL_VALUES) -> str:
    """``Boots 50, Shoes 40, Sandals 10``: label values by count (most first, then by name), at most ``shown`` of
    them and ``... N more`` for the rest."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{printable(k)} {v}" for k, v in items[:shown])
    rest = items[shown:]
    if rest:
        text += f", ... {len(rest)} more values ({sum(v for _, v in rest)} images)"
    return text


def _warnings_held(fn):
    """Hold back the warnings that ``fn`` logs (here and in :mod:`pixelnn.data.sources`: refused zip entries,
    a malformed identity file...) until it returns; when it fails with a PixelNNError they are dropped, so the
    error is the one line printed (its message already counts the skipped files)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        held: list[logging.LogRecord] = []

        def hold(record: logging.LogRecord) -> bool:
            if record.levelno >= logging.WARNING:
                held.append(record)
                return False
            return True

        loggers = [log, logging.getLogger("pixelnn.data.sources")]
        for lg in loggers:
            lg.addFilter(hold)
        try:
            result = fn(*args, **kwargs)
        except PixelNNError:
            held.clear()
            raise
        finally:
            for lg in loggers:
                lg.removeFilter(hold)
            for record in held:
                logging.getLogger(record.name).handle(record)
        return result

    return run


def _skip_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in skipped.items() if v) or "none"


@_warnings_held
def prepare_dataset(source: str | os.PathLike, out_dir: str | os.PathLike, task: TaskConfig, *,
                    fit: str = "auto", val_fraction: float = 0.05, test_fraction: float = 0.05,
                    limit: int | None = None, overwrite: bool = False, progress: bool = True,
                    label_names: Sequence[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_upscale: float = DEFAULT_MAX_UPSCALE, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                    workers: int | None = None, threads: int | None = None,
                    max_memory: int | None = None, sample: str = "random",
                    seed: int = DEFAULT_SAMPLE_SEED) -> PrepareReport:
    """Build a PixelNN dataset (see :mod:`pixelnn.data.dataset`) from a folder or a zip of images.

    Parameters
    ----------
    source : path
        A folder (recursive) or a ``.zip`` (read in place, never extracted). Images: .jpg .jpeg
        .png .bmp .gif .tif .tiff .webp; other files are ignored. Labels come from sub-folders
        (``Category``/``Subcategory``/``Brand`` for UT-Zappos50K, ``level1``, ``level2``, ...
        otherwise, or ``label_names``) and from ``identity_CelebA.txt`` (label ``identity``); see
        :mod:`pixelnn.data.sources`.
    out_dir : path
        The DATA_DIR to create. It appears only once complete; on any failure nothing is left.
    task : TaskConfig
        ``superres`` / ``edges`` / ``normals``: the photos are fitted to ``task.size`` and the
        inputs derived with :func:`pixelnn.tasks.derive`. ``normals`` expects aligned face crops
        (CelebA with ``fit='crop'``), skips photos where no face is found (counted as ``"no
        face"``; ``limit`` counts photos before that) and stores the face masks (``masks.npy``). ``paired``: every image is a pix2pix ``A|B`` pair
        (two halves side by side, width ~ 2 x height). ``task.direction='AtoB'``: the LEFT half A
        is the input x and the right half B the photo y; ``'BtoA'``: the right half is the input
        and the LEFT half the photo. **edges2handbags-subset has the photo on the LEFT and the
        edge map on the RIGHT, so edges -> photo there is ``direction='BtoA'``.** Both halves are
        fitted to ``task.size``; when every input is essentially grayscale (edge maps) the inputs
        are stored with 1 channel and ``input_channels=1`` is written into the manifest's task.
    fit : {'auto', 'pad', 'crop'}
        ``pad``: the whole image scaled into the square, centred on white (product photos such as
        UT-Zappos shoes). ``crop``: centre square crop, then resize (faces, cats). ``auto``: pad
        when most of the first ~50 images have a nearly white border, else crop.
    val_fraction, test_fraction : float
        Split fractions, assigned deterministically from a hash of each image's id (so the split
        does not depend on file order, ``limit`` or other files). Sources with ``train/``,
        ``val/``, ``test/`` folders use them instead; with ``train/`` and ``val/`` but no
        ``test/``, the given val images are split half/half into val and test by the same hash.
    limit : int, optional
        Keep only ``limit`` usable images, drawn as ``sample`` says (the kept images stay in sorted path order in
        the dataset, and keep the split their id gives). Images skipped as unusable are replaced, so ``limit``
        images are kept whenever the source has that many usable ones.
    sample : {'random', 'first'}
        How ``limit`` chooses. ``random`` (default): a sample seeded by ``seed``, stratified by the first label key
        (``Category`` for UT-Zappos50K, ``identity`` for CelebA; none without labels): every value gets its
        proportional share of ``limit`` (largest remainders, ties broken by the seed), an unusable image is
        replaced by another of its value, and a value that runs out of usable images passes its share on to the
        others in proportion. The kept set depends only on the source, ``limit`` and ``seed`` (not on the
        decoding threads). ``first``: the first ``limit`` usable images in sorted path order (on the shoes zip:
        boots only). Without ``limit`` every image is used either way. The manifest records the draw
        (``subset``); a subset that leaves out values of the first label is warned about (one line).
    seed : int
        Seed of the ``random`` sample (default 0).
    overwrite : bool
        Replace an existing ``out_dir`` (only once the new dataset is complete).
    progress : bool
        Show tqdm progress bars.
    label_names : sequence of str, optional
        Names of the folder levels below the collection root (default: see above).
    max_pixels : int
        Images with more pixels are skipped as ``"too large"`` (decompression-bomb guard, 64 MP).
    max_upscale : float
        Images whose fitted side is smaller than ``task.size`` are skipped as ``"too small"``
        unless ``task.size / side <= max_upscale`` (default 1.1, so 89-pixel-wide CelebA crops can
        make 96x96 photos); enlarged images are counted (``report.upscaled``) and logged. Use 1.0
        to never enlarge.
    max_file_bytes : int
        Image files (and zip members) bigger than this (64 MiB) are skipped as ``"too large"`` without
        being read; so are zip members that inflate more than
        :data:`pixelnn.data.sources.MAX_COMPRESSION_RATIO` times (zip bombs), and a read stops at this
        many bytes whatever the zip's header says (:meth:`pixelnn.data.sources.Source.read`).
    workers : int, optional
        Decoding threads (default: up to 4, bounded by the CPU count).
    threads : int, optional
        Torch CPU threads while the inputs are derived (HED, the face mesh), restored afterwards.
        Default: :data:`DEFAULT_DERIVE_THREADS` for ``normals`` (measured faster than all cores, see
        docs/data.md), torch's own choice for the other tasks.
    max_memory : int, optional
        Bytes of fitted photos and inputs prepare may hold before it writes them (default
        :data:`MAX_MEMORY_FRACTION` of :func:`memory_limit`); more is a one-line PixelNNError that
        suggests ``--limit`` or a smaller ``--size``, instead of an out-of-memory kill.

    Returns
    -------
    PrepareReport

    Raises
    ------
    PixelNNError
        The source does not exist, is not a folder or a zip, is an unreadable zip, holds no
        images, or no usable image remains (the message gives the skip counts); ``out_dir``
        exists and ``overwrite`` is false; invalid options (among them ``task.size`` x
        ``task.hed_scale`` over :data:`pixelnn.config.MAX_HED_SIDE` for HED edges); the photos would
        not fit in ``max_memory``.
    """
    t0 = time.perf_counter()
    if fit not in FITS:
        raise PixelNNError(f"invalid fit {fit!r}; valid: {', '.join(FITS)}")
    for name, v in (("val fraction", val_fraction), ("test fraction", test_fraction)):
        if not (0.0 <= v < 1.0) or math.isnan(v):
            raise PixelNNError(f"{name} must be in [0, 1), got {v}")
    if val_fraction + test_fraction >= 1.0:
        raise PixelNNError(f"val fraction + test fraction must be below 1, got {val_fraction + test_fraction}")
    if limit is not None and limit < 1:
        raise PixelNNError(f"limit must be at least 1, got {limit}")
    if sample not in SAMPLES:
        raise PixelNNError(f"invalid sample {sample!r}; valid: {', '.join(SAMPLES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PixelNNError(f"seed must be an integer >= 0, got {seed!r}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise PixelNNError(f"threads must be between 1 and {MAX_THREADS}, got {threads}")
    if max_upscale < 1.0:
        raise PixelNNError(f"max_upscale must be >= 1, got {max_upscale}")
    hed_side = round(task.size * task.hed_scale)
    if task.name == "edges" and task.edge_method == "hed" and hed_side > MAX_HED_SIDE:
        raise PixelNNError(f"HED would run on {hed_side} x {hed_side} images (size {task.size} x hed scale "
                           f"{task.hed_scale:g}); the limit is {MAX_HED_SIDE} (about 3 GB of memory): lower "
                           f"--hed-scale or --size, or use --edge-method canny")
    memory = int(max_memory) if max_memory is not None else int(MAX_MEMORY_FRACTION * memory_limit())
    out_dir = Path(out_dir).expanduser()
    src_path = Path(source).expanduser()
    recover(out_dir)  # an earlier --overwrite killed between its two renames is undone first
    if out_dir.exists() and not overwrite:
        raise PixelNNError(f"{printable(out_dir)} already exists; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise PixelNNError(f"{printable(out_dir)} exists and is not a folder")
    if src_path.exists():
        rs, ro = src_path.resolve(), out_dir.resolve()
        if rs == ro or ro in rs.parents:
            raise PixelNNError(f"the output {printable(out_dir)} must not contain the source {printable(src_path)}")
    check_replaceable(out_dir, DATASET_REPLACES, "dataset")  # before any work

    with open_source(src_path, exclude=out_dir) as src:
        skipped = {r: 0 for r in SKIP_REASONS}
        skipped[UNSAFE_PATH], skipped[BAD_NAME] = src.unsafe, src.bad_names
        if src.unsafe:
            log.warning("%s: refused %d zip entries with absolute paths, '..' components or symlinks",
                        printable(src.path), src.unsafe)
        if src.bad_names:
            log.warning("%s: left out %d image files whose names are not UTF-8 (rename them to use them)",
                        printable(src.path), src.bad_names)
        if not src.images:
            what = (f" ({src.unsafe} unsafe entries refused)" if src.unsafe else "") + \
                (f" ({src.bad_names} files with names that are not UTF-8 left out)" if src.bad_names else "")
            raise PixelNNError(f"no images found in {printable(src.path)}{what}; looked for "
                               f".jpg .jpeg .png .bmp .gif .tif .tiff .webp files")
        layout = plan_layout(src, label_names)
        log.info("%s %s: %d image files%s%s", src.kind, printable(src.path), len(src.images),
                 f", collection root {layout.root!r}" if layout.root else "",
                 f", split folders {', '.join(layout.split_folders)}" if layout.presplit else "")

        strat_key = layout.label_keys[0] if layout.label_keys else None
        subsetting = limit is not None and limit < len(src.images)
        method = sample if subsetting else "all"
        draw = _SampleDraw(src.images, layout, strat_key, limit, seed) if method == "random" else None
        paired = task.name == "paired"
        draft = None if paired else 2 * task.size
        n_workers = workers or max(1, min(4, os.cpu_count() or 1))

        def load(path: str):
            """-> list of RGB PIL images ([photo] or [input, photo]) or an UnusableImage."""
            try:
                try:  # at most max_file_bytes, zip bombs refused unread (UnusableImage "too large")
                    data = src.read(path, max_bytes=max_file_bytes)
                except UnusableImage:
                    raise
                except MemoryError:
                    raise UnusableImage(TOO_LARGE, "out of memory while reading") from None
                except Exception as e:  # OSError, BadZipFile (CRC), RuntimeError (encrypted), zlib.error...
                    raise UnusableImage(CORRUPT, f"cannot read: {e}") from None
                im = decode_image(data, max_pixels=max_pixels, draft_size=draft)
                if not paired:
                    return [im]
                a, b = split_pair(im)
                return [a, b] if task.direction == "AtoB" else [b, a]
            except UnusableImage as e:
                return e

        with pil_limits(max_pixels), ThreadPoolExecutor(n_workers) as pool:
            fit_used = fit
            if fit == "auto":
                fit_used = _auto_fit(draw.read_order() if draw else src.images, load, pool, paired)
                log.info("fit auto -> %s", fit_used)
            side_of = max if fit_used == "pad" else min

            def process(path: str):
                res = load(path)
                if isinstance(res, UnusableImage):
                    return res
                try:
                    arrays, up = [], False
                    for im in res:
                        ow, oh = im.info.get("original_size", im.size)
                        up |= side_of(ow, oh) < task.size
                        arrays.append(fit_image(im, task.size, fit_used, max_upscale=max_upscale,
                                                original_size=(ow, oh)))
                    return arrays, up
                except UnusableImage as e:
                    return e

            collected = _collect(src, layout, process, pool, limit, skipped, progress, task,
                                 val_fraction, test_fraction, memory, draw)
        per_split, upscaled, n_used = collected
        skipped = {k: v for k, v in skipped.items() if v}
        if n_used == 0:
            raise PixelNNError(f"no usable images in {printable(src.path)}: {len(src.images)} image files, "
                               f"skipped {_skip_text(skipped)}")
        if skipped:
            log.warning("skipped %d of %d files: %s",
                        sum(skipped.values()) - skipped.get(UNSAFE_PATH, 0) - skipped.get(BAD_NAME, 0),
                        len(src.images), _skip_text(skipped))
        if upscaled:
            log.warning("%d images were smaller than %dx%d and were enlarged (by at most x%.2f)",
                        upscaled, task.size, task.size, max_upscale)

        if threads is None and task.name == "normals":
            threads = DEFAULT_DERIVE_THREADS
        with _torch_threads(threads if task.name != "paired" else None):
            splits, task_out, no_face = _build_splits(per_split, task, progress)
        if no_face:
            skipped[NO_FACE] = no_face
            log.warning("skipped %d of %d photos where no face was found", no_face, n_used)
            n_used -= no_face
            if n_used == 0:
                raise PixelNNError(f"no usable images in {printable(src.path)}: no face found in any of the {no_face} photos "
                                   f"(the normals task needs aligned face crops, e.g. CelebA's)")
        if not len(splits.get("train", ())):
            log.warning("the train split is empty (only %d usable images)", n_used)
        kept_labels, source_values = _label_counts(splits, layout, strat_key)
        subset = {"method": method, "seed": int(seed) if method == "random" else None, "limit": limit,
                  "source_images": len(src.images), "stratified_by": strat_key if method == "random" else None,
                  "kept": n_used, "label_key": strat_key}
        if strat_key is not None:
            subset["label_values_kept"], subset["label_values_source"] = len(kept_labels), len(source_values)
            if len(kept_labels) <= RECORDED_LABEL_VALUES:
                subset["label_counts"] = dict(sorted(kept_labels.items(), key=lambda kv: (-kv[1], kv[0])))
        if method != "all" and strat_key is not None and len(kept_labels) < len(source_values):
            missing = sorted(set(source_values) - set(kept_labels), key=lambda v: (-source_values[v], v))
            log.warning("the %d images kept cover %d of the %d %s values of the source (%s missing, e.g. %s)%s",
                        n_used, len(kept_labels), len(source_values), strat_key, len(missing),
                        ", ".join(printable(v) for v in missing[:3]),
                        "" if method == "random" else "; --sample random draws a stratified sample")
        split_source = "folders" if layout.presplit else "hash"
        extra: dict[str, Any] = {
            "source_kind": src.kind,
            "skipped": skipped,
            "fit": fit_used,
            "fit_requested": fit,
            "label_keys": layout.label_keys,
            "split_source": split_source,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "limit": limit,
            "subset": subset,
            "found": len(src.images),
            "upscaled": upscaled,
            "max_upscale": max_upscale,
            "max_pixels": max_pixels,
        }
        notes = []
        if layout.presplit:
            extra["split_folders"] = list(layout.split_folders)
            if "val" in layout.split_folders and "test" not in layout.split_folders:
                extra["val_split_into_val_test"] = True
                notes.append("no test/ folder: the val/ images were split half/half into val and test")
            elif "val" not in layout.split_folders:
                notes.append("no val/ folder: val (and test) drawn from train/ by hash")
        if layout.identity_file:
            extra["identity_file"] = layout.identity_file
        if paired:
            extra["paired_halves"] = ("input=left A, photo=right B" if task.direction == "AtoB"
                                      else "input=right B, photo=left A")
        if task.name == "edges" and task.edge_method == "hed":
            import torch

            from pixelnn.devices import resolve_autocast

            # what task.hed_autocast meant on this machine (HED ran on its CPU): what made these edge maps
            extra["hed_autocast_ran"] = resolve_autocast(task.hed_autocast, torch.device("cpu"), "--hed-autocast")
        extra["notes"] = notes
        source_str = str(src.path)
        source_kind = src.kind
        found = len(src.images)

    write_dataset(out_dir, task_out, splits, source=source_str, extra=extra, overwrite=overwrite)
    report = PrepareReport(out_dir=out_dir, source=source_str, source_kind=source_kind,
                           counts={s: len(splits[s]) if s in splits else 0 for s in SPLITS},
                           skipped=skipped, label_keys=list(layout.label_keys), fit=fit_used, fit_requested=fit,
                           task=task_out, split_source=split_source, found=found, upscaled=upscaled,
                           seconds=time.perf_counter() - t0, notes=notes, subset=subset, kept_labels=kept_labels,
                           source_label_values=len(source_values))
    log.info("%s", report.summary())
    return report


def _auto_fit(paths: list[str], load, pool: ThreadPoolExecutor, paired: bool) -> str:
    """Decode the first ~50 usable images (photos) and choose pad/crop from their borders
    (:func:`pixelnn.data.images.choose_fit`). Each worker keeps only whether its image has a white border, not
    the image: 50 decoded images of up to 64 MP each would take gigabytes."""

    def border(path: str) -> bool | None:
        res = load(path)
        return None if isinstance(res, UnusableImage) else has_white_border(np.asarray(res[-1]))  # the photo

    borders: list[bool] = []
    for i in range(0, min(len(paths), 8 * AUTO_FIT_SAMPLES), AUTO_FIT_SAMPLES):
        for white in pool.map(border, paths[i:i + AUTO_FIT_SAMPLES]):
            if white is None:
                continue
            borders.append(white)
            if len(borders) >= AUTO_FIT_SAMPLES:
                return fit_from_borders(borders)
    return fit_from_borders(borders)


def memory_limit() -> int:
    """Bytes of memory this process may use: the machine's physical memory, or less when a cgroup (a container,
    a systemd slice) limits it."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB
        total = 8 * 2**30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return int(total)


def _too_much(held: int, memory: int, n: int, task: TaskConfig) -> str:
    gib = 2**30
    return (f"the photos would not fit in memory: {n} fitted {task.size}x{task.size} photos already take "
            f"{held / gib:.2f} GiB, over the {memory / gib:.2f} GiB prepare may hold ({MAX_MEMORY_FRACTION:.0%} of "
            f"this machine's {memory_limit() / gib:.1f} GiB); use --limit or a smaller --size")


def _split_for(item_id: str, folder: str | None, layout: Layout, val_fraction: float, test_fraction: float) -> str:
    if not layout.presplit:
        return assign_split(item_id, val_fraction, test_fraction)
    have = layout.split_folders
    if folder == "test":
        return "test"
    if folder == "val":
        return "val" if "test" in have else assign_split(item_id, 0.5, 0.5)
    # train/
    if "val" in have:
        return "train"
    return assign_split(item_id, val_fraction, 0.0 if "test" in have else test_fraction)


#: The stratum of images that lack the stratifying label (an image higher up in the folders).
NO_LABEL = "(none)"


def _stratum(layout: Layout, path: str, key: str | None) -> str:
    return layout.items[path][2].get(key, NO_LABEL) if key is not None else ""


def _label_counts(splits: dict[str, SplitData], layout: Layout, key: str | None
                  ) -> tuple[dict[str, int], dict[str, int]]:
    """Images kept and images in the whole source, by value of the label ``key`` (empty dicts without one)."""
    if key is None:
        return {}, {}
    kept: dict[str, int] = {}
    for d in splits.values():
        for r in d.records:
            v = r["labels"].get(key, NO_LABEL)
            kept[v] = kept.get(v, 0) + 1
    source: dict[str, int] = {}
    for path in layout.items:
        v = _stratum(layout, path, key)
        source[v] = source.get(v, 0) + 1
    return kept, source


def largest_remainder(sizes: Sequence[int], n: int, rng: np.random.Generator) -> list[int]:
    """Shares of ``n`` proportional to ``sizes`` (Hamilton's largest remainders), each at most its size, summing to
    ``min(n, sum(sizes))``; equal remainders are ordered by ``rng``.

    >>> largest_remainder([6, 3, 1], 4, np.random.default_rng(0))
    [2, 1, 1]
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    n = min(int(n), total)
    if n <= 0 or total == 0:
        return [0] * len(sizes)
    exact = sizes * n / total
    share = np.minimum(np.floor(exact).astype(np.int64), sizes)
    rest = n - int(share.sum())
    if rest > 0:
        order = np.lexsort((rng.random(len(sizes)), -(exact - share)))  # largest remainder first, ties by rng
        for i in order:
            if rest == 0:
                break
            if share[i] < sizes[i]:
                share[i] += 1
                rest -= 1
    return [int(v) for v in share]


def _interleave(lists: Sequence[Sequence[str]]) -> list[str]:
    """The items of several lists merged so that every prefix takes from each list in proportion to its length
    (item j of a list of n sits at (j + 1/2) / n; ties by list order)."""
    keyed = [((j + 0.5) / len(lst), i, j, item) for i, lst in enumerate(lists) for j, item in enumerate(lst)]
    return [k[-1] for k in sorted(keyed)]


class _SampleDraw:
    """The seeded, stratified sample of ``limit`` images that ``prepare --limit N`` keeps (``sample='random'``).

    The images are grouped by their value of the label ``key`` (one group without labels), each group is shuffled
    by the seed, and every group gets its share of ``limit`` (:func:`largest_remainder`). :meth:`next_paths`
    hands out the images to decode, as many as are still wanted; :meth:`settle` is told which were usable: an
    unusable image is replaced by the next of its group, and a group out of images passes what it still owes to
    the other groups, in proportion to their sizes. Every decision depends on the seed and on which images are
    usable, never on the order the decoding threads finish in.
    """

    def __init__(self, images: Sequence[str], layout: Layout, key: str | None, limit: int, seed: int):
        rng = np.random.default_rng(int(seed))
        groups: dict[str, list[str]] = {}
        for path in images:  # sorted paths: each group in path order before its shuffle
            groups.setdefault(_stratum(layout, path, key), []).append(path)
        self.values = sorted(groups)
        self.rng = rng
        self.groups = [[groups[v][i] for i in rng.permutation(len(groups[v]))] for v in self.values]
        self.want = largest_remainder([len(g) for g in self.groups], limit, rng)
        self.taken = [0] * len(self.groups)
        self.usable = [0] * len(self.groups)
        self.group_of = {path: gi for gi, g in enumerate(self.groups) for path in g}

    def read_order(self) -> list[str]:
        """The images of the first draw, interleaved across the groups (what ``fit='auto'`` looks at first), then
        the rest."""
        first = _interleave([g[:w] for g, w in zip(self.groups, self.want)])
        return first + _interleave([g[w:] for g, w in zip(self.groups, self.want)])

    def next_paths(self) -> list[str]:
        """The images to decode next (empty: done, either ``limit`` usable or no image left)."""
        while True:
            todo = []
            for gi, g in enumerate(self.groups):
                k = min(self.want[gi] - self.usable[gi], len(g) - self.taken[gi])  # all handed out are settled
                todo.append(g[self.taken[gi]:self.taken[gi] + max(0, k)])
            todo_all = _interleave([t for t in todo if t])
            if todo_all:
                for gi, t in enumerate(todo):
                    self.taken[gi] += len(t)
                return todo_all
            owed = sum(w - u for w, u in zip(self.want, self.usable))
            open_ = [gi for gi, g in enumerate(self.groups) if self.taken[gi] < len(g)]
            if owed <= 0 or not open_:
                return []
            for gi in range(len(self.groups)):  # the exhausted groups keep what they got
                if gi not in open_:
                    self.want[gi] = self.usable[gi]
            extra = largest_remainder([len(self.groups[gi]) - self.taken[gi] for gi in open_], owed, self.rng)
            for gi, e in zip(open_, extra):
                self.want[gi] += e

    def settle(self, path: str, usable: bool) -> None:
        """Record whether an image handed out was usable."""
        if usable:
            self.usable[self.group_of[path]] += 1


def _file_image(per_split: dict[str, dict[str, list]], path: str, arrays: Sequence[np.ndarray], layout: Layout,
                paired: bool, val_fraction: float, test_fraction: float) -> None:
    """Append one usable image (its arrays, input first for ``paired``) to the split its id gives."""
    item_id, folder, labels = layout.items[path]
    d = per_split[_split_for(item_id, folder, layout, val_fraction, test_fraction)]
    if paired:
        d["inputs"].append(arrays[0])
    d["photos"].append(arrays[-1])
    d["records"].append({"id": item_id, "source": path, "labels": labels})


def _collect(src: Source, layout: Layout, process, pool: ThreadPoolExecutor, limit: int | None,
             skipped: dict[str, int], progress: bool, task: TaskConfig, val_fraction: float,
             test_fraction: float, memory: int, draw: _SampleDraw | None = None):
    from tqdm.auto import tqdm

    per_split: dict[str, dict[str, list]] = {s: {"photos": [], "inputs": [], "records": []} for s in SPLITS}
    paired = task.name == "paired"
    n_used = upscaled = held = 0
    total = len(src.images) if limit is None else min(limit, len(src.images))
    if draw is not None:
        return _collect_draw(src, layout, process, pool, draw, skipped, progress, task, val_fraction,
                             test_fraction, memory, total)
    chunk, pos, images = 256, 0, src.images
    with tqdm(total=total, desc="reading images", unit="img", disable=not progress, leave=False) as bar:
        while pos < len(images) and (limit is None or n_used < limit):
            # with a limit, do not decode much past it
            want = chunk if limit is None else min(chunk, limit - n_used + 16)
            paths = images[pos:pos + want]
            pos += len(paths)
            for path, res in zip(paths, pool.map(process, paths)):
                if limit is not None and n_used >= limit:
                    break
                if isinstance(res, UnusableImage):
                    skipped[res.reason] = skipped.get(res.reason, 0) + 1
                    log.debug("skipping %s: %s", path, res)
                    if limit is None:
                        bar.update(1)
                    continue
                arrays, up = res
                held += sum(a.nbytes for a in arrays)
                if held > memory:
                    raise PixelNNError(_too_much(held, memory, n_used + 1, task))
                _file_image(per_split, path, arrays, layout, paired, val_fraction, test_fraction)
                n_used += 1
                upscaled += bool(up)
                bar.update(1)
    return per_split, upscaled, n_used


def _collect_draw(src: Source, layout: Layout, process, pool: ThreadPoolExecutor, draw: _SampleDraw,
                  skipped: dict[str, int], progress: bool, task: TaskConfig, val_fraction: float,
                  test_fraction: float, memory: int, total: int):
    """:func:`_collect` for a :class:`_SampleDraw`: decode what the draw hands out until it is done, then file the
    usable images in sorted path order (so the dataset's order does not depend on the draw's)."""
    from tqdm.auto import tqdm

    kept: dict[str, tuple[list, bool]] = {}
    held = 0
    with tqdm(total=total, desc="reading images (sample)", unit="img", disable=not progress, leave=False) as bar:
        while paths := draw.next_paths():
            for start in range(0, len(paths), 256):
                part = paths[start:start + 256]
                for path, res in zip(part, pool.map(process, part)):  # map keeps the order: no scheduling effect
                    if isinstance(res, UnusableImage):
                        skipped[res.reason] = skipped.get(res.reason, 0) + 1
                        log.debug("skipping %s: %s", path, res)
                        draw.settle(path, False)
                        continue
                    held += sum(a.nbytes for a in res[0])
                    if held > memory:
                        raise PixelNNError(_too_much(held, memory, len(kept) + 1, task))
                    kept[path] = res
                    draw.settle(path, True)
                    bar.update(1)
    per_split: dict[str, dict[str, list]] = {s: {"photos": [], "inputs": [], "records": []} for s in SPLITS}
    upscaled = 0
    for path in sorted(kept):
        arrays, up = kept.pop(path)
        _file_image(per_split, path, arrays, layout, task.name == "paired", val_fraction, test_fraction)
        upscaled += bool(up)
    return per_split, upscaled, sum(len(d["records"]) for d in per_split.values())


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads (None: leave them), then restore the previous count."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    log.debug("deriving inputs with %d torch thread(s)", n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_splits(per_split: dict[str, dict[str, list]], task: TaskConfig, progress: bool):
    """Stack the per-split lists into arrays and make the inputs.

    Returns the splits, the task as stored, and how many photos were dropped because their input
    could not be derived (``normals``: no face found).
    """
    from tqdm.auto import tqdm

    from pixelnn.tasks import derive

    splits: dict[str, SplitData] = {}
    task_out = task
    if task.name == "paired":
        gray = all(is_grayscale(x) for d in per_split.values() for x in d["inputs"])
        task_out = dataclasses.replace(task, input_channels=1 if gray else 3)
        if gray:
            log.info("paired inputs are grayscale: stored with 1 channel")
    dropped = 0
    for name in SPLITS:
        d = per_split[name]
        if not d["photos"]:
            continue
        photos = np.stack(d["photos"])
        d["photos"].clear()
        records, masks = d["records"], None
        if task.name == "paired":
            inputs = np.stack(d["inputs"])
            d["inputs"].clear()
            if task_out.input_channels == 1:
                inputs = np.rint(inputs.astype(np.float32).mean(axis=-1, keepdims=True)).astype(np.uint8)
        else:
            parts = []
            with tqdm(total=len(photos), desc=f"inputs ({name})", unit="img", leave=False,
                      disable=not progress or task.name == "superres") as bar:  # superres is instant
                # the face mesh is slow: a livelier bar; big photos: fewer at a time (HED's maps are 4 bytes a pixel)
                step = 64 if task.name == "normals" else max(1, min(DERIVE_BATCH, DERIVE_PIXELS // task.size**2))
                for i in range(0, len(photos), step):
                    batch = photos[i:i + step]
                    parts.append(derive(batch, task, progress=False))
                    bar.update(len(batch))
            inputs = np.concatenate([p.inputs for p in parts])
            usable = np.concatenate([p.usable for p in parts])
            if parts[0].masks is not None:
                masks = np.concatenate([p.masks for p in parts])
            if not usable.all():  # e.g. no face found: skipped like other bad input
                for r in (r for r, ok in zip(records, usable) if not ok):
                    log.debug("skipping %s: %s", r["source"], NO_FACE)
                dropped += int((~usable).sum())
                photos, inputs = photos[usable], inputs[usable]
                records = [r for r, ok in zip(records, usable) if ok]
                masks = None if masks is None else masks[usable]
            if not len(photos):
                continue
        splits[name] = SplitData(photos, inputs, records, masks)
    return splits, task_out, dropped


__all__ = ["DEFAULT_MAX_UPSCALE", "DEFAULT_SAMPLE_SEED", "MAX_MEMORY_FRACTION", "SAMPLES", "PrepareReport",
           "label_distribution", "largest_remainder", "memory_limit", "prepare_dataset"]
