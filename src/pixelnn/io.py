"""Atomic file writing: nothing on disk is ever left half-written.

Every writer produces a temporary file next to the destination and renames it into place
(``os.replace`` is atomic on POSIX), so a crash or Ctrl-C leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it onto ``path`` on success.

    Parameters
    ----------
    path : path-like
        Final destination.
    suffix : str, optional
        Suffix for the temporary file (some writers pick the format from it). Defaults to the
        destination's suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; an unreadable or corrupt one raises a one-line PixelNNError."""
    from pixelnn.errors import PixelNNError

    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PixelNNError(f"{path} is corrupt: {e}") from None
    except OSError as e:
        raise PixelNNError(f"cannot read {path}: {e.strerror or e}") from None


def read_folder_config(folder: str | os.PathLike, name: str, kind: str, how: str) -> Any:
    """``folder/name`` read as JSON; a one-line PixelNNError saying the folder is not a ``kind`` folder (and
    ``how`` to make one) when the file is missing."""
    from pixelnn.errors import PixelNNError

    path = Path(folder) / name
    if not path.is_file():
        raise PixelNNError(f"{folder} is not a {kind} directory (no {name}); {how}")
    return read_json(path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a .npy array atomically (never pickled)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save a uint8 image (H, W), (H, W, 1) or (H, W, 3) as PNG/JPEG atomically."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        raise TypeError(f"save_image expects uint8, got {arr.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place when the block succeeds.

    If ``path`` exists and ``overwrite`` is true, it is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                from pixelnn.errors import PixelNNError

                raise PixelNNError(f"{path} already exists; pass --overwrite to replace it")
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cache_dir() -> Path:
    """Folder for converted weights (safetensors made from the shipped packages' files).

    ``$PIXELNN_CACHE`` if set, else ``$XDG_CACHE_HOME/pixelnn`` or ``~/.cache/pixelnn``.
    """
    env = os.environ.get("PIXELNN_CACHE")
    if env:
        d = Path(env)
    else:
        d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixelnn"
    d.mkdir(parents=True, exist_ok=True)
    return d


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package, with a clear error if it is missing."""
    import importlib.util

    from pixelnn.errors import PixelNNError

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PixelNNError(f"package {package!r} is not installed; run scripts/install.sh "
                           f"(it installs the weight packages with pip --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise PixelNNError(f"{path} is missing from the installed {package!r} package")
    return path


def zip_dir(folder: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip a folder (entries under the folder's name, e.g. ``result/output_001.png``), atomically.

    Returns the zip's path.
    """
    import zipfile

    folder, zip_path = Path(folder), Path(zip_path)
    with atomic_path(zip_path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    z.write(f, Path(folder.name) / f.relative_to(folder))
    return zip_path
