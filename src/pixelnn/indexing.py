"""``pixelnn index``: build, grow or shrink the exemplar library of a trained model.

The command layer above both library formats (:mod:`pixelnn.zarr_store`, the default, and the version-1
:mod:`pixelnn.library`) and the engines (:mod:`pixelnn.engine`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from pixelnn.config import MODEL_FILES
from pixelnn.errors import PixelNNError
from pixelnn.io import recover
from pixelnn.library import DEFAULT_DIRNAME, MANIFEST, ExemplarLibrary

log = logging.getLogger(__name__)


def index_command(data_dir: str | Path, model_dir: str | Path, out: str | Path | None = None,
                  add: list[str | Path] | None = None, remove: list[str] | None = None, progress: bool = True,
                  overwrite: bool = False, split: str = "train", device: Any = "auto", global_dims: int | None = None,
                  block_size: int | None = None, engine: str = "local", **engine_options: Any) -> str:
    """``pixelnn index DATA_DIR --model MODEL_DIR [--out LIB] [--add DATA_DIR2 ...] [--remove ID ...]``.

    CLI semantics:

    - The library lives in ``--out`` (default ``MODEL_DIR/library``): a local folder or any fsspec URL.
    - If it does not exist (or ``--overwrite``), it is built as a chunked store
      (:mod:`pixelnn.zarr_store`) from the train pairs of DATA_DIR and of every ``--add`` dataset, with
      the model in MODEL_DIR (whose weights are copied in), by ``engine`` (``local`` or ``ray``,
      :mod:`pixelnn.engine`) in one commit.
    - If it exists, DATA_DIR and every ``--add`` dataset are added (one commit): pairs whose ids are
      already in the library are skipped, so re-running the same command is cheap and changes nothing.
      The library keeps using its own copy of the weights; a warning is logged if MODEL_DIR is another
      model or has been trained further since. A version-1 library (``library.json``) is updated in
      its own format; ``pixelnn library upgrade`` converts it.
    - ``--remove ID ...`` then removes exemplars by id (all ids must exist, or nothing is removed).
    - Any dataset whose task or image size differs from the library's is refused.
    - The whole command holds the library's writer lock (:func:`pixelnn.io.writer_lock`; local folders): a
      second writer waits for it, then works on what the first committed. A replacement killed between
      its two renames is undone first (:func:`pixelnn.io.recover`).

    Returns
    -------
    str
        A few summary lines for the CLI to print, the last one the size of the library's caches
        (:func:`pixelnn.caches.cache_line`).
    """
    from pixelnn import zarr_store

    model_dir = Path(model_dir)
    lib_url = str(out) if out is not None else str(model_dir / DEFAULT_DIRNAME)
    loc = zarr_store.Location(lib_url)
    with zarr_store.store_lock(loc):
        if loc.local:
            recover(loc.root)
        return _index(data_dir, model_dir, lib_url, loc, add, remove, progress, overwrite, split, device, global_dims,
                      block_size, engine, **engine_options)


def _index(data_dir: str | Path, model_dir: Path, lib_url: str, loc: Any, add: list[str | Path] | None,
           remove: list[str] | None, progress: bool, overwrite: bool, split: str, device: Any,
           global_dims: int | None, block_size: int | None, engine: str, **engine_options: Any) -> str:
    from pixelnn import zarr_store

    datasets = [Path(data_dir), *[Path(d) for d in (add or [])]]
    legacy = loc.local and (Path(loc.root) / MANIFEST).is_file() and not overwrite
    build_options = {k: v for k, v in (("global_dims", global_dims), ("block_size", block_size)) if v is not None}
    lines = []
    if legacy:
        if engine != "local":
            raise PixelNNError(f"{lib_url} is a version-1 library; `--engine {engine}` needs a chunked store: "
                               f"convert it with `pixelnn library upgrade {lib_url} NEW`")
        lib = ExemplarLibrary.open(loc.root)
        _warn_model(lib, model_dir, lib_url)
        for d in datasets:
            r = lib.add(d, split=split, progress=progress, device=device)
            lines.append(f"added {r.added} exemplars from {d} ({r.skipped} already present)")
    else:
        existing = loc.exists(zarr_store.STORE_JSON) and not overwrite
        if existing:
            _warn_model(zarr_store.ZarrLibrary.open(lib_url), model_dir, lib_url)
        plan = zarr_store.plan_build(lib_url, model_dir, datasets, split=split, overwrite=overwrite, device=device,
                                     progress=progress, **build_options)
        if engine == "local":
            infos = [zarr_store.write_block(plan, b, progress=progress) for b in plan.blocks]
            lib = zarr_store.commit_build(plan, infos, progress=progress)
        else:
            from pixelnn.engine import build_library

            lib = build_library(plan, engine=engine, progress=progress, **engine_options)
        for d in plan.datasets:
            verb = "added" if existing else "indexed"
            lines.append(f"{verb} {d['added']} exemplars from {d['path']} ({d['skipped']} already present)")
        if not existing:
            lines.insert(0, f"built {lib_url} from {len(datasets)} dataset(s) with the model {model_dir}")
    if remove:
        lines.append(f"removed {lib.remove(remove)} exemplars")
    lines.append(lib.summary())
    if loc.local:  # the caches beside the library (pixelnn.caches); a remote store keeps none
        from pixelnn.caches import cache_line

        lines.append(cache_line(loc.root))
    return "\n".join(lines)


def _warn_model(lib: Any, model_dir: Path, lib_url: str) -> None:
    """Warn when MODEL_DIR is not the model a library was built with, or has changed since."""
    weights = model_dir / MODEL_FILES.weights
    built_with = lib.model_dir
    want = (lib.manifest.get("model") or {}).get("weights_sha256") if isinstance(lib, ExemplarLibrary) \
        else lib.info["model"].get("weights_sha256")
    if built_with is not None and model_dir.resolve() != Path(built_with).resolve():
        log.warning("%s was built with the model %s, not %s; new pairs use the library's copy of its weights",
                    lib_url, built_with, model_dir)
    elif weights.is_file() and hashlib.sha256(weights.read_bytes()).hexdigest() != want:
        log.warning("%s has changed since %s was built; new pairs use the library's copy of the old weights "
                    "(rebuild with --overwrite to use the new ones)", weights, lib_url)
