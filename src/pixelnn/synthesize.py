"""``pixelnn synthesize``: many inputs (files, folders, globs) in batches, resumable.

>>> report = synthesize_files(["sketches/"], "models/shoes-edges", "results/")   # doctest: +SKIP
>>> print(report.summary())                                                      # doctest: +SKIP
72 outputs for each of 40 inputs in 61.2 s (0.65 inputs/s); 0 already complete -> results/

Every input gets ``OUT/<stem>/`` as :func:`pixelnn.pipeline.save_result` writes it (atomically: the
folder appears when complete). A re-run skips inputs whose folder is complete unless ``overwrite``,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import glob
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from pixelnn.errors import PixelNNError
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline, load_image_file, result_complete, save_result

log = logging.getLogger(__name__)

#: File name endings read as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: File name endings read as list files: one input (file, folder or glob) per line; relative paths are
#: relative to the list file's folder; blank lines and lines starting with # are ignored.
LIST_SUFFIXES = (".txt", ".lst", ".list")


def _list_file_items(path: Path) -> list[str]:
    items = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(line if Path(line).is_absolute() else str(path.parent / line))
    if not items:
        raise PixelNNError(f"list file {path} names no inputs")
    return items


def expand_inputs(items: Sequence[str | Path], _nested: bool = False) -> list[Path]:
    """Image files from files, folders (their images, sorted, not recursive), glob patterns and list files
    (``LIST_SUFFIXES``: one of those per line), in order.

    Raises a one-line PixelNNError for an item that matches nothing, and for two inputs whose
    output folders (their file stems) would clash.
    """
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PixelNNError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            paths += found
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES and not _nested:
            paths += expand_inputs(_list_file_items(p), _nested=True)
        elif p.is_file():
            paths.append(p)
        elif glob.has_magic(str(item)):
            found = sorted(Path(q) for q in glob.glob(str(item)) if Path(q).is_file())
            if not found:
                raise PixelNNError(f"no files match {item}")
            paths += found
        else:
            raise PixelNNError(f"no such input file or folder: {item}")
    paths = list(dict.fromkeys(paths))
    if _nested:
        return paths
    stems: dict[str, Path] = {}
    for q in paths:
        if q.stem in stems:
            raise PixelNNError(f"{stems[q.stem]} and {q} would both write OUT/{q.stem}; rename one")
        stems[q.stem] = q
    return paths


@dataclass
class SynthesizeReport:
    """What :func:`synthesize_files` did."""

    out_dir: Path
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    outputs_per_input: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = len(self.done) / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.outputs_per_input} outputs for each of {len(self.done)} inputs in {self.seconds:.1f} s "
                f"({rate:.2f} inputs/s); {len(self.skipped)} already complete"
                + (f"; {len(self.failed)} failed (listed in {self.out_dir / 'failures.jsonl'})" if self.failed else "")
                + f" -> {self.out_dir}")


def synthesize_files(inputs: Sequence[str | Path], model_dir: str | Path, out_dir: str | Path,
                     options: SynthesisOptions | None = None, *, library_dir: str | Path | None = None,
                     from_photo: bool = False, fit: str = "pad", batch_size: int = 8, overwrite: bool = False,
                     pixel_cache: bool = True, device: str = "auto", progress: bool = True,
                     pipeline: Any = None, engine: str = "local", **engine_options: Any) -> SynthesizeReport:
    """Synthesize every input image into ``out_dir/<stem>/``, ``batch_size`` inputs at a time.

    Parameters
    ----------
    inputs : sequence of path or glob
        Files, folders of images or glob patterns (:func:`expand_inputs`).
    model_dir : path
        Model folder with its library (or ``library_dir``).
    out_dir : path
        Results folder.
    options : SynthesisOptions
    from_photo : bool
        The files are photos: derive each input with the model's task (the photo is saved too).
    fit : {'pad', 'crop'}
        How photos are fitted to the square.
    batch_size : int
        Inputs per :meth:`pixelnn.pipeline.PixelNNPipeline.batch` (1: one :meth:`__call__` per input).
    overwrite : bool
        Redo inputs whose folder is complete (default: skip them).
    pixel_cache, device
        As in :meth:`pixelnn.pipeline.PixelNNPipeline.from_model_dir`.
    pipeline : PixelNNPipeline, optional
        Use this pipeline instead of loading one (tests, the web app).
    engine : {'local', 'ray'}
        ``ray``: :func:`pixelnn.engine.synthesize_ray` with ``engine_options`` (``address``, ``num_workers``,
        ``cpus_per_worker``, ``gpus_per_worker``, ``retries``): the same files, written by a Ray actor pool.

    Returns
    -------
    SynthesizeReport
        An unreadable input is reported in ``failed`` (and ``OUT/failures.jsonl``) and the others go on.
    """
    if engine != "local":
        from pixelnn.engine import check_engine_options, synthesize_ray

        check_engine_options(engine, **engine_options)
        return synthesize_ray(inputs, model_dir, out_dir, options, library_dir=library_dir, from_photo=from_photo,
                              fit=fit, batch_size=batch_size, overwrite=overwrite, pixel_cache=pixel_cache,
                              device=device, progress=progress, **engine_options)
    if engine_options:
        from pixelnn.engine import check_engine_options

        check_engine_options(engine, **engine_options)
    if batch_size < 1:
        raise PixelNNError(f"batch size must be >= 1, got {batch_size}")
    options = options or SynthesisOptions()
    paths = expand_inputs(inputs)
    out_dir = Path(out_dir)
    report = SynthesizeReport(out_dir)
    todo = []
    for p in paths:
        if not overwrite and result_complete(out_dir / p.stem):
            report.skipped.append(p)
        else:
            todo.append(p)
    if report.skipped:
        log.info("%d of %d inputs already have complete results in %s (skipped; --overwrite redoes them)",
                 len(report.skipped), len(paths), out_dir)
    if not todo:
        _write_failures(out_dir, report)
        return report
    pipe = pipeline or PixelNNPipeline.from_model_dir(model_dir, library_dir=library_dir, pixel_cache=pixel_cache,
                                                      device=device)
    options = pipe.check_options(options)  # fail on bad options before any work
    t0 = time.perf_counter()
    with tqdm(total=len(todo), desc="synthesize", unit="input", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), batch_size):
            batch, xs, photos = [], [], []
            for p in todo[start:start + batch_size]:
                try:
                    if from_photo:
                        photo = load_image_file(p, pipe.task.size, fit=fit)
                        x = pipe.input_from_photo(photo)
                    else:
                        photo, x = None, load_image_file(p, None, expect=pipe.regressor.config)
                    xs.append(pipe.check_input(x))
                except PixelNNError as e:
                    report.failed.append((p, str(e)))
                    log.debug("skipping %s: %s", p, e)
                    bar.update(1)
                    continue
                batch.append(p)
                photos.append(photo)
            if not batch:
                continue
            results = [pipe(xs[0], options)] if len(batch) == 1 else pipe.batch(xs, options)
            for p, photo, result in zip(batch, photos, results):
                save_result(result, out_dir / p.stem, pipe.library, photo=photo)
                report.done.append(p)
                report.outputs_per_input = len(result.outputs)
            bar.update(len(batch))
    report.seconds = time.perf_counter() - t0
    _write_failures(out_dir, report)
    return report


def _write_failures(out_dir: Path, report: SynthesizeReport) -> None:
    from pixelnn.engine import write_failures  # imports no Ray

    write_failures(out_dir, [{"input": str(p), "error": why, "attempts": 1} for p, why in report.failed])
