"""Photo collections on disk: a folder or a ``.zip`` read in place, and how their paths map to labels.

A source lists its image files (by extension, recursively, sorted by their POSIX path inside the
source) and reads them as bytes. Zips are never extracted: entries with an absolute path, a ``..``
component or a symlink mode are refused and counted (``unsafe``), and so are files whose name is not
valid UTF-8 (``bad_names``). Reads are bounded (:meth:`Source.read`): a file or zip member larger than
``max_file_bytes`` (:data:`DEFAULT_MAX_FILE_BYTES`, 64 MiB) by its size on disk or in the zip directory, or
a member that would inflate more than :data:`MAX_COMPRESSION_RATIO` times (a zip bomb), is refused
unread as ``"too large"``, and the bytes are read in chunks that stop at the limit, whatever a header
says. Hidden files and folders
(``.name``) and ``__MACOSX`` are ignored everywhere; files without an image extension are ignored
(``README.txt``, ``identity_CelebA.txt`` ...).

Layout rules (:func:`plan_layout`), applied to the path of every image inside the source:

1. **Collection root.** If every image lies under one single top-level folder (as in most zips:
   ``afhq-cat/...``, ``ut-zap50k-images/...``), that folder is the collection root.
2. **Pre-made splits.** If the first folder level below the root is ``train``/``val``/``test`` for
   every image (the pix2pix convention), it gives the split and is not a label. (Checked both
   before and after step 1, so a folder holding just ``train/`` and ``val/`` works.)
3. **Folder labels.** The remaining folder levels become labels, named by ``label_names`` when
   given, else ``Category``, ``Subcategory``, ``Brand`` for UT-Zappos50K (detected by a path
   component, or the source folder's name, equal to ``ut-zap50k-images``), else ``level1``,
   ``level2``, ... Images at different depths just have fewer labels.
4. **CelebA identities.** If a file named ``identity_CelebA.txt`` (lines ``<file name> <id>``) is
   anywhere in the source, every image whose file name is listed gets the label ``identity``.
"""

from __future__ import annotations

import logging
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from pixelnn.data.images import IMAGE_EXTENSIONS, TOO_LARGE, UnusableImage, is_image_name
from pixelnn.errors import PixelNNError

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "val", "test")
ZAPPOS_ROOT = "ut-zap50k-images"
ZAPPOS_LABELS = ("Category", "Subcategory", "Brand")
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
MAX_TEXT_BYTES = 64 * 1024 * 1024      # label files larger than this are ignored
#: Image files (folder files and zip members) larger than this are "too large", refused unread. A 64 MP
#: photo, the decoder's pixel limit, is a 10-30 MB JPEG; only an uncompressed BMP or TIFF of that size
#: needs more (192 MB): such files are refused by this limit before their pixels are.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
#: A zip member over :data:`RATIO_CHECK_BYTES` that inflates more than this many times its compressed size
#: is refused unread as "too large" (a zip bomb: zeros deflate 1,000 to 1; JPEG and PNG photos, already
#: compressed, 1 to 1; edges2handbags' A|B pairs saved as uncompressed BMPs, white backgrounds and all,
#: 8 to 14).
MAX_COMPRESSION_RATIO = 100
#: Members up to this size are not checked for their compression ratio (a small blank image may inflate
#: 1,000 times, and costs nothing).
RATIO_CHECK_BYTES = 4 * 1024 * 1024
#: Files are read this many bytes at a time, so that a read stops at its limit.
READ_CHUNK = 1024 * 1024


def _ignored(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _unsafe_zip_name(name: str) -> bool:
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) >= 2 and n[1] == ":"):
        return True
    return any(p == ".." for p in n.split("/"))


@dataclass
class Source:
    """A listed collection. ``images`` are POSIX paths inside the source, sorted."""

    path: Path
    kind: str  # "folder" or "zip"
    images: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # non-image, non-hidden files (for label files)
    unsafe: int = 0
    bad_names: int = 0  # image files whose path is not valid UTF-8 (left out: ids and records are UTF-8 text)
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    _zip: zipfile.ZipFile | None = None
    _zip_names: dict[str, zipfile.ZipInfo] = field(default_factory=dict)
    _sizes: dict[str, int] = field(default_factory=dict)

    def file_size(self, name: str) -> int:
        return self._sizes.get(name, 0)

    def read(self, name: str, max_bytes: int | None = None) -> bytes | bytearray:
        """Bytes of one listed file, at most ``max_bytes`` of them (default ``max_file_bytes``).

        The limit is checked three times, so that a read never holds more than ``max_bytes`` (+ one chunk):
        against the size listed (on disk, or in the zip directory), for zip members against their
        compression ratio (:data:`MAX_COMPRESSION_RATIO`), and while the bytes are read, in chunks of
        :data:`READ_CHUNK` (a file that grew since it was listed, a header that lies).

        Raises
        ------
        UnusableImage
            Reason ``"too large"``: over the limit, or a zip member that inflates too much (a zip bomb).
        OSError, zipfile.BadZipFile, RuntimeError, zlib.error, EOFError
            The file cannot be read (a damaged or encrypted member).
        """
        limit = self.max_file_bytes if max_bytes is None else int(max_bytes)
        if self._zip is not None:
            info = self._zip_names[name]
            check_member(info, limit)
            with self._zip.open(info) as f:
                return read_bounded(f, limit)
        listed = self._sizes.get(name)
        if listed is not None and listed > limit:
            raise UnusableImage(TOO_LARGE, f"{listed} bytes, more than the limit of {limit}")
        with open(self.path / name, "rb") as f:
            return read_bounded(f, limit)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_member(info: zipfile.ZipInfo, limit: int) -> None:
    """Refuse a zip member before reading it: larger than ``limit`` bytes by the zip directory, or (over
    :data:`RATIO_CHECK_BYTES`) inflating more than :data:`MAX_COMPRESSION_RATIO` times its compressed size.

    Raises
    ------
    UnusableImage
        Reason ``"too large"``, naming the size or the ratio.
    """
    if info.file_size > limit:
        raise UnusableImage(TOO_LARGE, f"{info.file_size} bytes inflated, more than the limit of {limit}")
    if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size):
        raise UnusableImage(TOO_LARGE, f"{info.compress_size} bytes that inflate to {info.file_size}, "
                                       f"{info.file_size // max(1, info.compress_size)} to 1 (a zip bomb?); the "
                                       f"limit is {MAX_COMPRESSION_RATIO} to 1")


def read_bounded(f, limit: int) -> bytearray:
    """Read a binary file object to its end in chunks of :data:`READ_CHUNK`, refusing it (``UnusableImage``,
    ``"too large"``) as soon as more than ``limit`` bytes came: the memory held stays within ``limit`` plus
    one chunk, whatever the file claimed."""
    buf = bytearray()
    while True:
        chunk = f.read(min(READ_CHUNK, limit + 1 - len(buf)))
        if not chunk:
            return buf
        buf += chunk
        if len(buf) > limit:
            raise UnusableImage(TOO_LARGE, f"more than the limit of {limit} bytes when read")


def open_source(path: str | os.PathLike, *, exclude: str | os.PathLike | None = None) -> Source:
    """List a folder or a zip file.

    Parameters
    ----------
    path : path
        A folder (searched recursively; symlinked folders are not followed) or a zip file.
    exclude : path, optional
        A folder to leave out of a folder source (e.g. the output directory).

    Raises
    ------
    PixelNNError
        The path does not exist, is neither a folder nor a zip, or the zip is unreadable.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise PixelNNError(f"source {p} does not exist")
    if p.is_dir():
        return _open_folder(p, exclude)
    if p.is_file():
        try:
            is_zip = zipfile.is_zipfile(p)
        except OSError as e:
            raise PixelNNError(f"cannot read source {p}: {e.strerror or e}") from None
        if is_zip:
            return _open_zip(p)
        if p.suffix.lower() == ".zip":
            raise PixelNNError(f"source {p} is not a valid zip file (corrupt or truncated?)")
        raise PixelNNError(f"source {p} is neither a folder nor a .zip file")
    raise PixelNNError(f"source {p} is neither a folder nor a .zip file")


def _open_folder(root: Path, exclude) -> Source:
    src = Source(path=root, kind="folder")
    ex = Path(exclude).resolve() if exclude is not None else None
    try:
        root_abs = root.resolve()
    except OSError as e:
        raise PixelNNError(f"cannot read source folder {root}: {e}") from None
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root_abs, onerror=errors.append):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX"
                             and (ex is None or Path(dirpath, d) != ex))
        rel_dir = Path(dirpath).relative_to(root_abs)
        for fn in filenames:
            if fn.startswith("."):
                continue
            rel = (rel_dir / fn).as_posix()
            full = Path(dirpath, fn)
            if not full.is_file():  # broken symlink, fifo, socket...
                continue
            if is_image_name(fn) and not _utf8(rel):
                src.bad_names += 1
                log.debug("leaving out %r: its name is not UTF-8", rel)
            elif is_image_name(fn):
                src.images.append(rel)
                try:
                    src._sizes[rel] = full.stat().st_size
                except OSError:
                    src._sizes[rel] = 0
            else:
                src.others.append(rel)
    if errors and not src.images:
        raise PixelNNError(f"cannot read source folder {root}: {errors[0].strerror or errors[0]}")
    for e in errors:
        log.warning("cannot read %s: %s", e.filename, e.strerror or e)
    src.path = root_abs
    src.images.sort()
    src.others.sort()
    return src


def _utf8(name: str) -> bool:
    """Whether a path decoded from the file system is valid UTF-8 (undecodable bytes become surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _open_zip(path: Path) -> Source:
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:  # (a damaged version)
        raise PixelNNError(f"source {path} is not a readable zip file: {e}") from None
    src = Source(path=path.resolve(), kind="zip", _zip=zf)
    for info in infos:
        name = info.filename
        if info.is_dir():
            continue
        mode = info.external_attr >> 16
        if _unsafe_zip_name(name) or stat.S_ISLNK(mode):
            src.unsafe += 1
            log.debug("refusing unsafe zip entry %r", name)
            continue
        norm = PurePosixPath(name.replace("\\", "/"))
        parts = [p for p in norm.parts if p not in ("", ".")]
        if not parts or _ignored(parts):
            continue
        rel = "/".join(parts)
        if rel in src._zip_names:  # duplicate entry names: keep the first
            continue
        src._zip_names[rel] = info
        if is_image_name(rel):
            src.images.append(rel)
            src._sizes[rel] = info.file_size
        else:
            src.others.append(rel)
    src.images.sort()
    src.others.sort()
    return src


# ----------------------------------------------------------------------------------------------
# layout: split folders, labels, ids


@dataclass
class Layout:
    """What :func:`plan_layout` found.

    Attributes
    ----------
    root : str
        The collection root inside the source ('' when none was stripped).
    presplit : bool
        Whether ``train``/``val``/``test`` folders give the split.
    split_folders : tuple of str
        The split folders present (over all images, before any ``limit``).
    label_keys : list of str
        Label names, in folder order (``identity`` last when present).
    items : dict
        path -> ``(id, split or None, labels)``.
    """

    root: str
    presplit: bool
    split_folders: tuple[str, ...]
    label_keys: list[str]
    items: dict[str, tuple[str, str | None, dict[str, str]]]
    zappos: bool = False
    identity_file: str | None = None


def _single_top(paths: list[list[str]]) -> str | None:
    tops = {p[0] for p in paths if len(p) > 1}
    if len(tops) == 1 and all(len(p) > 1 for p in paths):
        return tops.pop()
    return None


def _all_split(paths: list[list[str]]) -> bool:
    return bool(paths) and all(len(p) > 1 and p[0] in SPLIT_FOLDERS for p in paths)


def _stem_ids(paths: list[str]) -> dict[str, str]:
    """Ids: the path without its extension, or with it when two files share a stem (a.jpg, a.png)."""
    stems: dict[str, list[str]] = {}
    for p in paths:
        stems.setdefault(os.path.splitext(p)[0], []).append(p)
    ids = {}
    for stem, ps in stems.items():
        for p in ps:
            ids[p] = stem if len(ps) == 1 else p
    return ids


def read_identities(src: Source) -> tuple[str | None, dict[str, str]]:
    """Find ``identity_CelebA.txt`` in the source and parse it to {file name: identity}."""
    cands = [o for o in src.others if PurePosixPath(o).name == CELEBA_IDENTITY_FILE]
    if not cands:
        return None, {}
    name = min(cands, key=lambda o: (o.count("/"), o))
    if len(cands) > 1:
        log.warning("several %s files in %s; using %s", CELEBA_IDENTITY_FILE, src.path, name)
    if src.kind == "zip":
        size = src._zip_names[name].file_size
    else:
        size = (src.path / name).stat().st_size
    if size > MAX_TEXT_BYTES:
        log.warning("ignoring %s: larger than %d bytes", name, MAX_TEXT_BYTES)
        return None, {}
    try:
        text = src.read(name, max_bytes=MAX_TEXT_BYTES).decode("utf-8", errors="replace")
    except Exception as e:  # unreadable label file (or a zip bomb): go on without identities
        log.warning("cannot read %s: %s", name, e)
        return None, {}
    ids: dict[str, str] = {}
    bad = 0
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if len(f) != 2:
            bad += 1
            continue
        ids[f[0]] = f[1]
    if bad:
        log.warning("%s: ignored %d malformed lines", name, bad)
    log.debug("read %d identities from %s", len(ids), name)
    return name, ids


def plan_layout(src: Source, label_names: Sequence[str] | None = None) -> Layout:
    """Work out the collection root, split folders, labels and ids of every image (see module doc)."""
    paths = [p.split("/") for p in src.images]
    root: list[str] = []
    zappos_folder = src.kind == "folder" and src.path.name == ZAPPOS_ROOT
    presplit = _all_split(paths)
    if not presplit and not zappos_folder:
        top = _single_top(paths)
        if top is not None:
            root = [top]
            rest = [p[1:] for p in paths]
            if _all_split(rest):
                presplit = True
    zappos = zappos_folder or any(ZAPPOS_ROOT in p[:-1] for p in paths)
    id_file, identities = read_identities(src)
    ids = _stem_ids(src.images)
    items: dict[str, tuple[str, str | None, dict[str, str]]] = {}
    label_keys: list[str] = []
    split_folders: set[str] = set()

    def key_name(i: int) -> str:
        if label_names is not None and i < len(label_names):
            return label_names[i]
        if zappos and label_names is None and i < len(ZAPPOS_LABELS):
            return ZAPPOS_LABELS[i]
        return f"level{i + 1}"

    for path, parts in zip(src.images, paths):
        folders = parts[len(root):-1]
        split = None
        if presplit:
            split, folders = folders[0], folders[1:]
            split_folders.add(split)
        if zappos and ZAPPOS_ROOT in parts[:-1]:
            folders = parts[parts.index(ZAPPOS_ROOT) + 1:-1]
        labels: dict[str, str] = {}
        for i, f in enumerate(folders):
            k = key_name(i)
            labels[k] = f
            if k not in label_keys:
                label_keys.append(k)
        if identities:
            ident = identities.get(parts[-1])
            if ident is not None:
                labels["identity"] = ident
        items[path] = (ids[path], split, labels)
    if identities and "identity" not in label_keys:
        label_keys.append("identity")
    return Layout(root="/".join(root), presplit=presplit,
                  split_folders=tuple(s for s in SPLIT_FOLDERS if s in split_folders),
                  label_keys=label_keys, items=items, zappos=zappos, identity_file=id_file)


__all__ = ["DEFAULT_MAX_FILE_BYTES", "IMAGE_EXTENSIONS", "MAX_COMPRESSION_RATIO", "Layout", "Source", "check_member",
           "open_source", "plan_layout", "read_bounded", "read_identities"]
