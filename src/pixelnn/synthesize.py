"""``pixelnn synthesize``: many inputs (files, folders, globs) in batches, resumable.

>>> report = synthesize_files(["sketches/"], "models/shoes-edges", "results/")   # doctest: +SKIP
>>> print(report.summary())                                                      # doctest: +SKIP
72 outputs for each of 40 inputs in 61.2 s (0.65 inputs/s); 0 already complete -> results/

Every input gets ``OUT/<name>/`` as :func:`pixelnn.pipeline.save_result` writes it (atomically: the
folder appears when complete), where the name is the input's file stem; inputs that share a stem get
``STEM-EXT`` (``a.jpg`` and ``a.png`` -> ``a-jpg/`` and ``a-png/``) and a name still taken (one file name in
two folders) ``-2``, ``-3``... in input order (:func:`output_names`). Each manifest records its input file
(``input``: path and sha256). A re-run skips inputs whose folder holds their complete result unless
``overwrite``, so an interrupted run resumes where it stopped; a folder that is not a PixelNN result is
never replaced (that input fails with a one-line error), nor, without ``overwrite``, the result of
another input.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from pixelnn.engine import (BAD, DEFAULT_RETRIES, FAILED, FATAL, OK, _default_workers, check_engine_options,
                            init_ray, one_line, ray_map, write_failures)
from pixelnn.errors import PixelNNError, printable
from pixelnn.io import need, read_json, read_text
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
    for line in read_text(path, "list file").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(line if Path(line).is_absolute() else str(path.parent / line))
    if not items:
        raise PixelNNError(f"list file {path} names no inputs")
    return items


def expand_inputs(items: Sequence[str | Path], _nested: bool = False) -> list[Path]:
    """Image files from files, folders (their images, sorted, not recursive), glob patterns and list files
    (``LIST_SUFFIXES``: one of those per line), in order.

    Raises a one-line PixelNNError for an item that matches nothing. Inputs sharing a file stem get
    distinct output folders (:func:`output_names`).
    """
    paths: list[Path] = []
    for item in items:
        try:
            paths += _expand_item(item, _nested)
        except (OSError, ValueError) as e:  # a name too long or with a NUL (from a list file), a folder unreadable
            raise PixelNNError(f"cannot use input {printable(item)}: {getattr(e, 'strerror', None) or e}") from None
    return list(dict.fromkeys(paths))


def output_names(paths: Sequence[Path]) -> list[str]:
    """The result folder name of each input, in order.

    An input whose file stem no other input has keeps its stem (``a.png`` -> ``a``). Inputs that share a
    stem (compared case-insensitively) get ``STEM-EXT``, the extension lower-cased (``a.jpg``, ``a.png`` ->
    ``a-jpg``, ``a-png``); a name still taken (the same file name in two folders, or an input whose stem is
    already ``a-png``) gets ``-2``, ``-3``... in input order.

    >>> output_names([Path("x/a.jpg"), Path("x/a.png"), Path("x/b.png"), Path("y/a.png")])
    ['a-jpg', 'a-png', 'b', 'a-png-2']
    """
    from collections import Counter

    stems = Counter(p.stem.lower() for p in paths)
    names: list[str | None] = [p.stem if stems[p.stem.lower()] == 1 else None for p in paths]
    taken = {n.lower() for n in names if n is not None}
    for i, p in enumerate(paths):
        if names[i] is not None:
            continue
        base = f"{p.stem}-{p.suffix[1:].lower()}" if p.suffix[1:] else p.stem
        name, k = base, 2
        while name.lower() in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name.lower())
        names[i] = name
    return [str(n) for n in names]


def result_state(folder: Path, input_file: Path) -> str:
    """``"absent"``; ``"done"``: the complete result of ``input_file`` (or of an input its manifest does not
    record); ``"other"``: the complete result of another input file (its recorded sha256 differs);
    ``"replaceable"``: an empty folder or a damaged result; ``"foreign"``: anything PixelNN did not write."""
    from pixelnn.io import written_by_pixelnn
    from pixelnn.pipeline import RESULT_REPLACES, input_record

    if not (folder.exists() or folder.is_symlink()):
        return "absent"
    if not written_by_pixelnn(folder, RESULT_REPLACES):
        return "foreign"
    if not result_complete(folder):
        return "replaceable"
    try:
        recorded = json.loads((folder / "manifest.json").read_text()).get("input") or {}
    except (OSError, ValueError, AttributeError):
        return "replaceable"
    want = recorded.get("sha256") if isinstance(recorded, dict) else None
    try:
        return "other" if want and want != input_record(input_file)["sha256"] else "done"
    except OSError:
        return "done"


def _expand_item(item: str | Path, _nested: bool) -> list[Path]:
    """The image files of one :func:`expand_inputs` item."""
    paths: list[Path] = []
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
        raise PixelNNError(f"no such input file or folder: {printable(item)}")
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
    #: The library's pixel cache (:mod:`pixelnn.pixel_cache`) and its size after the run; None when not used.
    pixel_cache_dir: Path | None = None
    pixel_cache_bytes: int = 0

    def summary(self) -> str:
        from pixelnn.caches import format_size

        rate = len(self.done) / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.outputs_per_input} outputs for each of {len(self.done)} inputs in {self.seconds:.1f} s "
                f"({rate:.2f} inputs/s); {len(self.skipped)} already complete"
                + (f"; {len(self.failed)} failed (listed in {self.out_dir / 'failures.jsonl'})" if self.failed else "")
                + f" -> {self.out_dir}"
                + (f"; pixel cache {format_size(self.pixel_cache_bytes)} in {self.pixel_cache_dir}"
                   if self.pixel_cache_dir is not None else ""))


def _measure_pixel_cache(report: SynthesizeReport, model_dir: str | Path, library_dir: str | Path | None,
                         pixel_cache: bool) -> SynthesizeReport:
    """Record in ``report`` the size of the pixel cache the run used (a local version-1 library's
    ``pixel_cache/``), for its summary line; nothing when the cache is off or the library keeps none."""
    from pixelnn.caches import PIXEL_CACHE, tree_size
    from pixelnn.library import DEFAULT_DIRNAME, MANIFEST

    lib = Path(model_dir) / DEFAULT_DIRNAME if library_dir is None else library_dir
    if not pixel_cache or "://" in str(lib) or not (Path(lib) / MANIFEST).is_file():
        return report
    report.pixel_cache_dir = Path(lib) / PIXEL_CACHE
    report.pixel_cache_bytes = tree_size(report.pixel_cache_dir)[0]
    return report


def _inputs_to_do(inputs: Sequence[str | Path], out_dir: Path, overwrite: bool, batch_size: int
                  ) -> tuple[SynthesizeReport, list[Path], dict[Path, str]]:
    """The expanded inputs split into already complete (the report's ``skipped``), refused (``failed``: their
    folder is not a PixelNN result, or another input's without ``overwrite``) and still to do, with every
    input's folder name (both engines)."""
    from pixelnn.io import recover_all

    if batch_size < 1:
        raise PixelNNError(f"batch size must be >= 1, got {batch_size}")
    paths = expand_inputs(inputs)
    names = dict(zip(paths, output_names(paths)))
    recover_all(out_dir)  # interrupted result swaps, temporary folders of killed runs
    report, todo = SynthesizeReport(out_dir), []
    for p in paths:
        folder = out_dir / names[p]
        state = result_state(folder, p)
        if state == "foreign":
            report.failed.append((p, f"{folder} exists and is not a PixelNN result (no manifest.json of format "
                                     f"'pixelnn-synthesis'); PixelNN replaces only its own results: move it away "
                                     f"or choose another --out"))
        elif state == "other" and not overwrite:
            report.failed.append((p, f"{folder} holds the result of another input (its manifest records another "
                                     f"file); pass --overwrite to replace it with {p.name}'s, or choose another --out"))
        elif state == "done" and not overwrite:
            report.skipped.append(p)
        else:
            todo.append(p)
    if report.skipped:
        log.info("%d of %d inputs already have complete results in %s (skipped; --overwrite redoes them)",
                 len(report.skipped), len(paths), out_dir)
    return report, todo, names


def synthesize_files(inputs: Sequence[str | Path], model_dir: str | Path, out_dir: str | Path,
                     options: SynthesisOptions | None = None, *, library_dir: str | Path | None = None,
                     from_photo: bool = False, fit: str | None = None, batch_size: int = 8, overwrite: bool = False,
                     pixel_cache: bool = True, device: str = "auto", progress: bool = True,
                     pipeline: Any = None, engine: str = "local", correspondence_maps: bool = True,
                     **engine_options: Any) -> SynthesizeReport:
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
    fit : {'pad', 'crop'}, optional
        How photos are fitted to the square (default: the pipeline's :attr:`~pixelnn.pipeline.PixelNNPipeline.photo_fit`,
        ``crop`` for normals models, else ``pad``).
    batch_size : int
        Inputs per :meth:`pixelnn.pipeline.PixelNNPipeline.batch` (1: one :meth:`__call__` per input).
    overwrite : bool
        Redo inputs whose folder is complete (default: skip them).
    pixel_cache, device
        As in :meth:`pixelnn.pipeline.PixelNNPipeline.from_model_dir`.
    pipeline : PixelNNPipeline, optional
        Use this pipeline instead of loading one (tests, the web app).
    correspondence_maps : bool
        Also write each output's ``correspondence_NNN.png`` figure (default); without them a result keeps
        every correspondence in ``correspondences.npz``, and is written in about half the time.
    engine : {'local', 'ray'}
        ``ray``: :func:`synthesize_ray` with ``engine_options`` (``address``, ``num_workers``,
        ``cpus_per_worker``, ``gpus_per_worker``, ``retries``): the same files, written by a Ray actor pool.

    Returns
    -------
    SynthesizeReport
        An unreadable input is reported in ``failed`` (and ``OUT/failures.jsonl``) and the others go on.
    """
    if engine != "local":
        check_engine_options(engine, **engine_options)
        return synthesize_ray(inputs, model_dir, out_dir, options, library_dir=library_dir, from_photo=from_photo,
                              fit=fit, batch_size=batch_size, overwrite=overwrite, pixel_cache=pixel_cache,
                              device=device, progress=progress, correspondence_maps=correspondence_maps,
                              **engine_options)
    if engine_options:
        check_engine_options(engine, **engine_options)
    options = options or SynthesisOptions()
    out_dir = Path(out_dir)
    report, todo, names = _inputs_to_do(inputs, out_dir, overwrite, batch_size)
    if not todo:
        _write_failures(out_dir, report)
        return _measure_pixel_cache(report, model_dir, library_dir, pixel_cache and pipeline is None)
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
                        photo, x = pipe.input_from_photo_file(p, fit)
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
                try:
                    save_result(result, out_dir / names[p], pipe.library, photo=photo, input_file=p,
                                save_correspondence_maps=correspondence_maps,
                                recover_parent=False)  # recovered once, in _inputs_to_do
                except PixelNNError as e:  # e.g. a folder that appeared meanwhile and is not a result
                    report.failed.append((p, str(e)))
                    continue
                report.done.append(p)
                report.outputs_per_input = len(result.outputs)
            bar.update(len(batch))
    report.seconds = time.perf_counter() - t0
    _write_failures(out_dir, report)
    cache = getattr(pipe, "pixel_cache", None)
    if cache is not None and getattr(cache, "dir", None) is not None:  # the cache this run filled
        from pixelnn.caches import tree_size

        report.pixel_cache_dir = Path(cache.dir).parent
        report.pixel_cache_bytes = tree_size(report.pixel_cache_dir)[0]
    return report


def _write_failures(out_dir: Path, report: SynthesizeReport) -> None:

    write_failures(out_dir, [{"input": str(p), "error": why, "attempts": 1} for p, why in report.failed])


# ---------------------------------------------------------------------------------------------- synthesis
def _written_since(out_dir: Path, started: float, overwrite: bool) -> bool:
    """A complete result that this run must not write again: any complete one (no overwrite), else one
    written since the run started (its manifest's mtime; the clocks of the nodes and the file system must agree)."""
    from pixelnn.pipeline import result_complete

    if not result_complete(out_dir):
        return False
    return not overwrite or (out_dir / "manifest.json").stat().st_mtime >= started


class SynthesisWorker:
    """A Ray Data actor: opens the pipeline once, then synthesizes batches of input paths into ``out_dir``."""

    def __init__(self, model_dir: str, out_dir: str, options: Any = None, library_dir: str | None = None,
                 from_photo: bool = False, fit: str | None = None, overwrite: bool = False, pixel_cache: bool = True,
                 device: str = "auto", threads: int = 1, started: float = 0.0, cwd: str | None = None,
                 names: dict[str, str] | None = None, correspondence_maps: bool = True) -> None:
        import torch

        if cwd and os.path.isdir(cwd):  # relative paths in the options (region masks, "like" photos) as the driver's
            os.chdir(cwd)
        torch.set_num_threads(max(1, int(threads)))
        logging.getLogger("pixelnn").setLevel(logging.WARNING)
        from pixelnn.logs import quiet_third_party

        quiet_third_party()  # a worker does not run the CLI's logging setup: faiss's loader would speak at INFO
        self.out_dir, self.from_photo, self.fit = Path(out_dir), from_photo, fit
        self.overwrite, self.started, self.correspondence_maps = overwrite, started, correspondence_maps
        self.names = dict(names or {})  # input key -> result folder name (output_names); default: the stem
        self.fatal: str | None = None
        try:
            self.pipe = self.open(model_dir, library_dir, pixel_cache, device)
            self.options = self.pipe.check_options(options)
        except PixelNNError as e:
            self.fatal = str(e)

    def open(self, model_dir: str, library_dir: str | None, pixel_cache: bool, device: str) -> Any:
        from pixelnn.pipeline import PixelNNPipeline

        return PixelNNPipeline.from_model_dir(model_dir, library_dir=library_dir, pixel_cache=pixel_cache, device=device)

    def folder(self, path: Path) -> Path:
        """Where the result of the input ``path`` goes."""
        return self.out_dir / (self.names.get(str(path)) or path.stem)

    def save(self, result: Any, path: Path, photo: Any) -> None:
        from pixelnn.pipeline import save_result

        save_result(result, self.folder(path), self.pipe.library, photo=photo, input_file=path,
                    save_correspondence_maps=self.correspondence_maps,
                    recover_parent=False)  # the driver recovered OUT

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pixelnn.pipeline import load_image_file

        keys = [str(k) for k in batch["key"]]
        out: dict[str, tuple[str, str, int]] = {}
        if self.fatal is not None:
            out = {k: (FATAL, self.fatal, 0) for k in keys}
        else:
            pipe = self.pipe
            todo, xs, photos = [], [], []
            for k in keys:
                p = Path(k)
                if _written_since(self.folder(p), self.started, self.overwrite):  # a retried task
                    out[k] = (OK, "", -1)
                    continue
                try:
                    if self.from_photo:
                        photo, x = pipe.input_from_photo_file(p, self.fit)
                    else:
                        photo, x = None, load_image_file(p, None, expect=pipe.regressor.config)
                    xs.append(pipe.check_input(x))
                except PixelNNError as e:
                    out[k] = (BAD, str(e), 0)
                    continue
                except Exception as e:
                    out[k] = (FAILED, one_line(e), 0)
                    continue
                todo.append(p)
                photos.append(photo)
            if todo:
                try:
                    results = [pipe(xs[0], self.options)] if len(todo) == 1 else pipe.batch(xs, self.options)
                except Exception as e:
                    results = None
                    for p in todo:
                        out[str(p)] = (FAILED, one_line(e), 0)
                for p, photo, result in zip(todo, photos, results or []):
                    try:
                        self.save(result, p, photo)
                        out[str(p)] = (OK, "", len(result.outputs))
                    except Exception as e:
                        out[str(p)] = (FAILED, one_line(e), 0)
        return {"key": np.array(keys, dtype=object),
                "status": np.array([out[k][0] for k in keys], dtype=object),
                "error": np.array([out[k][1] for k in keys], dtype=object),
                "value": np.array([json.dumps(out[k][2]) for k in keys], dtype=object)}


def _absolute(path: str | Path | None) -> str | None:
    """A local path made absolute for the workers (their working folder may differ); URLs as given."""
    if path is None or "://" in str(path):
        return None if path is None else str(path)
    return str(Path(path).resolve())


def _clean_temp_dirs(out_dir: Path, stems: Iterable[str]) -> None:
    """Remove the half-written ``.<stem>.tmp.*`` folders that a killed worker left behind."""
    for stem in stems:
        for tmp in out_dir.glob(f".{stem}.tmp.*"):
            shutil.rmtree(tmp, ignore_errors=True)


def synthesize_ray(inputs: Sequence[str | Path], model_dir: str | Path, out_dir: str | Path, options: Any = None, *,
                   library_dir: str | Path | None = None, from_photo: bool = False, fit: str | None = None,
                   batch_size: int = 8, overwrite: bool = False, pixel_cache: bool = True, device: str = "auto",
                   progress: bool = True, address: str | None = None, num_workers: int | None = None,
                   cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, retries: int = DEFAULT_RETRIES,
                   worker_cls: type = SynthesisWorker, correspondence_maps: bool = True) -> Any:
    """:func:`pixelnn.synthesize.synthesize_files` on a Ray cluster: the same files in ``out_dir``.

    The inputs to do become a Ray dataset mapped over ``num_workers`` actors (each ``cpus_per_worker``
    CPUs, its torch threads, and ``gpus_per_worker`` GPUs) that open the pipeline once. ``address``: a
    running cluster; default: a local one with ``num_workers * cpus_per_worker`` CPUs. Failed inputs are
    retried (module docstring), then listed in the report and ``OUT/failures.jsonl``.
    ``worker_cls`` (tests): a :class:`SynthesisWorker` subclass.
    """
    check_engine_options("ray", address, num_workers, cpus_per_worker, gpus_per_worker, retries)
    options = options or SynthesisOptions()
    out_dir = Path(out_dir)
    report, todo, names = _inputs_to_do(inputs, out_dir, overwrite, batch_size)
    if not todo:
        write_failures(out_dir, [{"input": str(p), "error": why, "attempts": 1} for p, why in report.failed])
        return _measure_pixel_cache(report, model_dir, library_dir, pixel_cache)
    refused = list(report.failed)
    ray, started_ray = init_ray(address, num_cpus=(num_workers or os.cpu_count() or 1) * cpus_per_worker,
                                num_gpus=(num_workers or 1) * gpus_per_worker or None)
    try:
        n = num_workers or _default_workers(ray, cpus_per_worker, gpus_per_worker)
        started = time.time()
        kwargs = dict(model_dir=str(Path(model_dir).resolve()), out_dir=str(out_dir.resolve()), options=options,
                      library_dir=_absolute(library_dir), from_photo=from_photo,
                      fit=fit, overwrite=overwrite, pixel_cache=pixel_cache, device=device,
                      threads=max(1, int(cpus_per_worker)), started=started, cwd=os.getcwd(),
                      names={str(p.resolve()): names[p] for p in todo}, correspondence_maps=correspondence_maps)
        keys = [str(p.resolve()) for p in todo]
        by_key = dict(zip(keys, todo))
        t0 = time.perf_counter()
        with tqdm(total=len(todo), desc=f"synthesize (ray, {n} workers)", unit="input", disable=not progress,
                  dynamic_ncols=True) as bar:
            def on_result(key: str, status: str, error: str, value: Any) -> None:
                if status != FAILED:
                    bar.update(1)
                if isinstance(value, int) and value > 0:
                    report.outputs_per_input = value

            values, failures = ray_map(
                ray, keys, worker_cls, kwargs, num_workers=n, cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker, retries=retries, batch_size=batch_size, on_result=on_result,
                already_done=lambda k: _written_since(out_dir / names[by_key[k]], started, overwrite))
            bar.update(bar.total - bar.n)  # the failed ones, now final
        report.seconds = time.perf_counter() - t0
    finally:
        if started_ray:
            ray.shutdown()
    _clean_temp_dirs(out_dir, (names[p] for p in todo))
    for k, p in zip(keys, todo):
        if k in values:
            report.done.append(p)
        else:
            report.failed.append((p, failures[k]["error"]))
    if not report.outputs_per_input and report.done:  # every result came from an earlier, killed task
        m = out_dir / names[report.done[0]] / "manifest.json"
        report.outputs_per_input = len(need(read_json(m, "synthesis manifest", expect=dict), "outputs", m, list)) \
            if m.is_file() else 0
    write_failures(out_dir, [{"input": str(p), "error": why, "attempts": 1} for p, why in refused]
                   + [{"input": str(by_key[k]), "error": f["error"], "attempts": f["attempts"]}
                      for k, f in failures.items()])
    return _measure_pixel_cache(report, model_dir, library_dir, pixel_cache)
