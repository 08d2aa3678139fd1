"""The disk caches PixelNN writes, their sizes, and ``pixelnn cache info|clear``.

PixelNN keeps copies of things it can compute again, in two places:

- in a library folder (``MODEL_DIR/library`` or ``--library``):

  - ``pixel_cache/<descriptor>-<fingerprint>/``: the exemplars' pixel descriptors
    (:mod:`pixelnn.pixel_cache`), filled lazily by ``synthesize``, ``evaluate`` and the web app, or
    ahead of time by ``index --pixel-cache``; 1.2 MB per exemplar at 64 dims, so gigabytes for a large
    library. Version-1 libraries only (chunked stores keep none). ``cache clear`` removes it: the
    entries are recomputed, identically, when next needed.
  - ``pca_<descriptor>_<dims>.safetensors``: the pixel descriptors' PCA, fitted once per library. Listed but
    never cleared: a refit on a library that has grown since gives other components, so other outputs.

- in the shared folder :func:`pixelnn.io.cache_dir` (``$PIXELNN_CACHE``, else ``~/.cache/pixelnn``):

  - ``inception/``: Inception features of the real photos of evaluated splits (``evaluate``);
    ``cache clear --shared`` removes them (recomputed identically).
  - ``*.safetensors``: weights converted from the installed weight packages (HED, LPIPS, the face mesh).
    Listed, never cleared: rebuilding them needs those packages (and h5py for HED).

:func:`clear` removes only files whose names PixelNN gives (``<2 hex>/<40 hex>.npy`` in a descriptor folder,
``<32 hex>.npy`` features, and the ``.tmp-*`` files of interrupted writes), never follows a symlink, and leaves
anything else where it is (counted in its summary). A synthesis running meanwhile recomputes what it misses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pixelnn.errors import PixelNNError, printable

#: The library's pixel cache folder (:attr:`pixelnn.library.ExemplarLibrary.pixel_cache_dir`).
PIXEL_CACHE = "pixel_cache"
#: Feature cache of ``evaluate`` inside :func:`pixelnn.io.cache_dir`.
INCEPTION = "inception"
_DESCRIPTOR_DIR = re.compile(r"[A-Za-z0-9_.+-]+-[0-9a-f]{16}")
_SHARD_DIR = re.compile(r"[0-9a-f]{2}")
_ENTRY = re.compile(r"[0-9a-f]{40}\.npy|\.tmp-.+\.npy")
_FEATURES = re.compile(r"[0-9a-f]{32}\.npy|\.tmp.*")
_PCA = re.compile(r"pca_[A-Za-z0-9_]+_[0-9]+\.safetensors")


@dataclass
class Cache:
    """One cache on disk.

    Attributes
    ----------
    kind : str
        ``pixel cache``, ``PCA fit``, ``Inception features`` or ``converted weights``.
    path : Path
    bytes, files : int
        Its size and number of files (0 when absent).
    clearable : bool
        Whether ``pixelnn cache clear`` removes it (``--shared`` for the shared folder's).
    note : str
        What it holds (the descriptor of a pixel cache).
    """

    kind: str
    path: Path
    bytes: int
    files: int
    clearable: bool
    note: str = ""

    def line(self) -> str:
        keep = "" if self.clearable else " (kept by clear)"
        note = f", {self.note}" if self.note else ""
        return (f"{self.kind}: {printable(self.path)}: {format_size(self.bytes)} in {self.files} file"
                f"{'s' if self.files != 1 else ''}{note}{keep}")


def format_size(n: int) -> str:
    """``0 B``, ``512 B``, ``12.3 KiB``, ``1.2 MiB``, ``3.40 GiB``."""
    if n < 1024:
        return f"{n} B"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)):
        if n < 1024 * scale or unit == "TiB":
            return f"{n / scale:.2f} {unit}" if unit in ("GiB", "TiB") else f"{n / scale:.1f} {unit}"
    raise AssertionError  # unreachable


def tree_size(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes, files) of the regular files under ``path`` (a file: itself), symlinks not followed; (0, 0) when it
    is absent or unreadable."""
    path = Path(path)
    try:
        st = path.lstat()
    except OSError:
        return 0, 0
    if path.is_symlink():
        return 0, 0
    if not path.is_dir():
        return st.st_size, 1
    total = files = 0
    for dirpath, dirnames, filenames in os.walk(path):  # followlinks=False: symlinked folders are not entered
        for fn in filenames:
            try:
                s = os.lstat(os.path.join(dirpath, fn))
            except OSError:  # removed meanwhile
                continue
            if not os.path.islink(os.path.join(dirpath, fn)):
                total += s.st_size
                files += 1
    return total, files


def library_root(target: str | os.PathLike) -> Path:
    """The library folder of ``target``: a model folder (its ``library/``) or a library folder (``library.json``
    or ``store.json``).

    Raises
    ------
    PixelNNError
        One line: the path does not exist, or is neither a model folder with a library nor a library.
    """
    from pixelnn.library import DEFAULT_DIRNAME, MANIFEST
    from pixelnn.zarr_store import STORE_JSON

    if "://" in str(target):
        raise PixelNNError(f"{printable(target)}: a remote store keeps no cache (caches are local folders)")
    p = Path(target).expanduser()
    if not p.exists():
        raise PixelNNError(f"{printable(p)} does not exist")
    if not p.is_dir():
        raise PixelNNError(f"{printable(p)} is a file; give a model folder or a library folder")
    for lib in (p, p / DEFAULT_DIRNAME):
        if (lib / MANIFEST).is_file() or (lib / STORE_JSON).is_file():
            return lib
    raise PixelNNError(f"{printable(p)} is neither a model folder with a library nor a library folder "
                       f"(no {MANIFEST} or {STORE_JSON} in it or in {DEFAULT_DIRNAME}/)")


def pixel_cache_size(library_dir: str | os.PathLike) -> int:
    """Bytes in a library's pixel cache folder (0 when it has none)."""
    return tree_size(Path(library_dir) / PIXEL_CACHE)[0]


def library_caches(library_dir: str | os.PathLike) -> list[Cache]:
    """The caches in a library folder: one per pixel-cache descriptor folder (or one empty entry when there is
    none) and one per PCA fit."""
    root = Path(library_dir)
    pc = root / PIXEL_CACHE
    out = []
    subs = sorted(d for d in _listdir(pc) if (pc / d).is_dir() and not (pc / d).is_symlink())
    for d in subs:
        size, files = tree_size(pc / d)
        out.append(Cache("pixel cache", pc / d, size, files, True, f"descriptor {d.rsplit('-', 1)[0]}"))
    if not subs:
        from pixelnn.zarr_store import STORE_JSON

        size, files = tree_size(pc)
        chunked = (root / STORE_JSON).is_file() and not pc.exists()
        out.append(Cache("pixel cache", pc, size, files, True,
                         "none: a chunked store describes exemplars per query" if chunked else "empty" if not files
                         else ""))
    for f in sorted(n for n in _listdir(root) if _PCA.fullmatch(n)):
        size, files = tree_size(root / f)
        out.append(Cache("PCA fit", root / f, size, files, False))
    return out


def shared_caches() -> list[Cache]:
    """The caches in the shared folder :func:`pixelnn.io.cache_dir` (which is not created here)."""
    root = shared_dir()
    size, files = tree_size(root / INCEPTION)
    out = [Cache("Inception features", root / INCEPTION, size, files, True, "evaluate's real photos")]
    weights = sorted(n for n in _listdir(root) if n.endswith(".safetensors") and (root / n).is_file())
    if weights:
        sizes = [tree_size(root / n) for n in weights]
        out.append(Cache("converted weights", root, sum(s for s, _ in sizes), len(weights), False,
                         ", ".join(weights)))
    return out


def shared_dir() -> Path:
    """:func:`pixelnn.io.cache_dir` without creating it."""
    env = os.environ.get("PIXELNN_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixelnn"


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def cache_line(library_dir: str | os.PathLike) -> str:
    """One line for the summaries of ``index``: the library's caches and their sizes."""
    from pixelnn.zarr_store import STORE_JSON

    root = Path(library_dir)
    caches = library_caches(root)
    pixel = [c for c in caches if c.kind == "pixel cache"]
    pca = [c for c in caches if c.kind == "PCA fit"]
    size = sum(c.bytes for c in pixel)
    if (root / STORE_JSON).is_file() and not (root / PIXEL_CACHE).exists():
        text = "caches: no pixel cache (a chunked store describes exemplars per query)"
    else:
        text = f"caches: pixel cache {format_size(size)} in {printable(root / PIXEL_CACHE)}"
    if pca:
        text += f", {len(pca)} PCA fit{'s' if len(pca) > 1 else ''} {format_size(sum(c.bytes for c in pca))}"
    return text + " (pixelnn cache info|clear)"


def info(target: str | os.PathLike | None) -> list[str]:
    """``pixelnn cache info [MODEL_DIR|LIB_DIR]``: one line per cache (path, size, files), then the total."""
    caches = (library_caches(library_root(target)) if target is not None else []) + shared_caches()
    lines = [c.line() for c in caches]
    total = sum(c.bytes for c in caches)
    pixel = sum(c.bytes for c in caches if c.kind == "pixel cache")
    shared = sum(c.bytes for c in caches if c.clearable and c.kind != "pixel cache")
    clear_how = (f"`pixelnn cache clear` frees {format_size(pixel)}, with --shared {format_size(pixel + shared)}"
                 if target is not None else f"`pixelnn cache clear --shared` frees {format_size(shared)}")
    lines.append(f"total {format_size(total)}; {clear_how}")
    return lines


def _remove_matching(folder: Path, allowed) -> tuple[int, int, int]:
    """Remove the files under ``folder`` that ``allowed(relative parts)`` accepts, then the folders left empty;
    returns (bytes freed, files removed, files left). Symlinks are never followed (a symlink is left)."""
    freed = removed = left = 0
    if not folder.is_dir() or folder.is_symlink():
        return 0, 0, 0
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        rel = Path(dirpath).relative_to(folder).parts
        for fn in filenames:
            path = os.path.join(dirpath, fn)
            if os.path.islink(path) or not allowed((*rel, fn)):
                left += 1
                continue
            try:
                size = os.lstat(path).st_size
                os.unlink(path)
            except FileNotFoundError:  # a concurrent clear
                continue
            except OSError as e:
                raise PixelNNError(f"cannot remove {printable(path)}: {e.strerror or e}") from None
            freed += size
            removed += 1
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                try:
                    os.rmdir(p)
                except OSError:  # not empty (files left), or gone
                    pass
    try:
        folder.rmdir()
    except OSError:
        pass
    return freed, removed, left


def _pixel_entry(parts: tuple[str, ...]) -> bool:
    return (len(parts) == 3 and bool(_DESCRIPTOR_DIR.fullmatch(parts[0])) and bool(_SHARD_DIR.fullmatch(parts[1]))
            and bool(_ENTRY.fullmatch(parts[2])))


def _feature_entry(parts: tuple[str, ...]) -> bool:
    return len(parts) == 1 and bool(_FEATURES.fullmatch(parts[0]))


def clear(target: str | os.PathLike | None, shared: bool = False) -> str:
    """``pixelnn cache clear [MODEL_DIR|LIB_DIR] [--shared]``: remove the library's pixel cache (and with
    ``shared`` the Inception features of :func:`pixelnn.io.cache_dir`); returns a one-line summary."""
    if target is None and not shared:
        raise PixelNNError("cache clear needs a model or library folder, or --shared (for the shared feature cache)")
    jobs = []
    if target is not None:
        jobs.append((library_root(target) / PIXEL_CACHE, _pixel_entry))
    if shared:
        jobs.append((shared_dir() / INCEPTION, _feature_entry))
    freed = removed = left = 0
    for folder, allowed in jobs:
        f, r, lf = _remove_matching(folder, allowed)
        freed, removed, left = freed + f, removed + r, left + lf
    where = " and ".join(printable(folder) for folder, _ in jobs)
    text = f"freed {format_size(freed)}: removed {removed} cache file{'s' if removed != 1 else ''} from {where}"
    if left:
        text += f"; left {left} file{'s' if left != 1 else ''} PixelNN did not write"
    return text


__all__ = ["Cache", "cache_line", "clear", "format_size", "info", "library_caches", "library_root",
           "pixel_cache_size", "shared_caches", "shared_dir", "tree_size"]
