"""Label images of exemplars: reading a label folder, and built-in label sources.

A **label folder** (``LABEL_DIR``) holds one label image per exemplar id, at ``LABEL_DIR/<id>.png``
where the slashes of the id are sub-folders (``ut-zap50k-images/Boots/Ankle/AIGLE/8113228.1912`` ->
``LABEL_DIR/ut-zap50k-images/Boots/Ankle/AIGLE/8113228.1912.png``), so the folder mirrors the
dataset's source tree. Ids with an empty, ``.`` or ``..`` component are refused.

Two kinds of label images, told apart by the PNG's mode (all images of one folder must be of one kind):

``index``
    Integer class masks: mode ``L`` (8 bit), ``I;16`` / ``I`` (16 bit, classes 0..65535), ``1`` (0/1)
    or ``P`` (palette PNG: the palette indices are the classes, and the palette is kept to write the
    transferred maps back in the same colours). The pixel value **is** the class id.
``rgb``
    RGB palettes: every distinct colour is a class (at most 256; an image with more colours is
    anti-aliased or a JPEG, not a label image). Class ids number the palette, and transferred maps
    are written back in the same colours. ``RGBA`` images are taken as RGB when fully opaque.

An optional ``LABEL_DIR/labels.json`` names the classes (``pixelnn labels`` writes one)::

    {"format": "pixelnn-labels", "version": 1, "kind": "index",
     "classes": [{"id": 0, "name": "background", "color": [0, 0, 0]},
                 {"id": 1, "name": "foreground", "color": [255, 140, 0]}]}

With it, a pixel of a class it does not list is an error; for ``rgb`` its ``color`` entries are the
palette, in id order (so ids are stable across transfers). Without it, an ``rgb`` palette is the
distinct colours of the images read, sorted by (R, G, B), and ``index`` display colours are black
for class 0 and well-separated hues for the other classes present.

Label images must be square and in the exemplar's coordinates (the prepared, fitted photo the
library holds); a square image of another size is resized to the exemplar size with nearest
neighbour (a debug message says so); a non-square one is an error (the photo was padded or
cropped to the square, so no resize would align it).

Built-in sources (``pixelnn labels``): :func:`foreground_masks` (objects on a white background, e.g.
shoes) and :func:`face_masks` (the face mesh of :mod:`pixelnn.normals`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from pixelnn.errors import PixelNNError
from pixelnn.visualize import palette

log = logging.getLogger(__name__)

FORMAT = "pixelnn-labels"
VERSION = 1
META = "labels.json"
KINDS = ("index", "rgb")
#: Most classes an RGB palette may have.
MAX_RGB_CLASSES = 256
#: Largest class id of an integer mask (16-bit PNG).
MAX_INDEX_CLASS = 65535
#: Near-white threshold of :func:`foreground_masks`: a pixel whose smallest channel is at least this is white.
WHITE_THRESHOLD = 240
#: :func:`foreground_masks` keeps foreground components of at least this share of the largest one.
MIN_COMPONENT_SHARE = 0.05
#: Colours of the built-in binary sources: background, foreground.
BINARY_COLORS = ((0, 0, 0), (255, 140, 0))


# --------------------------------------------------------------------------------------------------
# classes


@dataclass
class LabelSet:
    """The classes of a label folder and how to write them back.

    Attributes
    ----------
    kind : {'index', 'rgb'}
    ids : ndarray, (C,) int64
        Class ids, ascending. ``index``: the pixel values; ``rgb``: 0..C-1, positions in ``colors``.
    colors : ndarray, (C, 3) uint8
        Display colour of each class (``rgb``: the label colour itself).
    names : list of str or None
        Class names (from ``labels.json``), or None.
    png_palette : ndarray, (256, 3) uint8, optional
        ``index`` folders of palette PNGs: their palette, used to write maps back as palette PNGs.
    """

    kind: str
    ids: np.ndarray
    colors: np.ndarray
    names: list[str] | None = None
    png_palette: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def color_table(self) -> np.ndarray:
        """A lookup table (max id + 1, 3) uint8: the display colour of every class id (grey for others)."""
        lut = np.full((int(self.ids.max()) + 1 if len(self.ids) else 1, 3), 128, np.uint8)
        lut[self.ids] = self.colors
        return lut

    def to_image(self, labels: np.ndarray) -> Image.Image:
        """A class-id map (H, W) as the folder's kind of image: ``L`` / ``I;16`` / ``P`` or ``RGB``."""
        labels = np.asarray(labels)
        if self.kind == "rgb":
            return Image.fromarray(np.ascontiguousarray(self.colors[labels]), "RGB")
        if self.png_palette is not None:
            im = Image.fromarray(labels.astype(np.uint8), "L").convert("P")
            im.putpalette(self.png_palette.astype(np.uint8).ravel().tolist())
            return im
        if labels.size and labels.max() > 255:
            return Image.fromarray(labels.astype(np.uint16))
        return Image.fromarray(labels.astype(np.uint8), "L")

    def describe(self) -> list[dict[str, Any]]:
        """Per class: ``{"id", "name", "color"}`` (the JSON of transfer results and ``labels.json``)."""
        return [{"id": int(i), "name": self.names[k] if self.names else None,
                 "color": [int(v) for v in self.colors[k]]} for k, i in enumerate(self.ids)]


def index_colors(ids: np.ndarray) -> np.ndarray:
    """Default display colours of integer classes: black for class 0, well-separated hues for the others
    (in id order), (C, 3) uint8."""
    ids = np.asarray(ids)
    others = palette(max(int((ids != 0).sum()), 1))
    out = np.zeros((len(ids), 3), np.uint8)
    out[ids != 0] = others[:int((ids != 0).sum())]
    return out


def binary_labelset(names: tuple[str, str]) -> LabelSet:
    """The class set of the built-in 0/1 sources: 0 = ``names[0]`` (black), 1 = ``names[1]`` (orange)."""
    return LabelSet("index", np.array([0, 1]), np.array(BINARY_COLORS, np.uint8), list(names))


# --------------------------------------------------------------------------------------------------
# reading label images


@dataclass
class LabelImage:
    """One label image as read: ``kind``, the array (``index``: (S, S) int64 values; ``rgb``: (S, S, 3)
    uint8) and, for palette PNGs, their palette (256, 3)."""

    kind: str
    array: np.ndarray
    png_palette: np.ndarray | None = None


def read_label_image(path: str | Path, size: int | None = None) -> LabelImage:
    """Read one label image (see the module docstring for the kinds).

    Parameters
    ----------
    path : path
    size : int, optional
        The exemplar size S: a square image of another size is resized to it with nearest neighbour.

    Raises
    ------
    PixelNNError
        One line naming the file: missing, unreadable, not square, a mode that is not a label mode
        (``LA``, ``CMYK``, translucent ``RGBA`` ...), negative or too large class values.
    """
    path = Path(path)
    if not path.is_file():
        raise PixelNNError(f"no label image {path}")
    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise PixelNNError(f"cannot read label image {path}: {e}") from None
    w, h = im.size
    if w != h:
        raise PixelNNError(f"label image {path} is {w}x{h}; label images must be square, in the exemplar's "
                           f"coordinates ({size or 'S'}x{size or 'S'})")
    if im.mode == "RGBA":
        if np.asarray(im)[..., 3].min() < 255:
            raise PixelNNError(f"label image {path} has transparent pixels; save it as RGB or as a class mask")
        im = im.convert("RGB")
    if im.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "RGB"):
        raise PixelNNError(f"label image {path} has mode {im.mode}; use an integer class mask (L, I;16, P) or an "
                           f"RGB palette")
    if im.mode == "RGB":  # counted before any resize, which would drop colours
        colours = len(np.unique(_colour_codes(np.asarray(im, np.uint8))))
        if colours > MAX_RGB_CLASSES:
            raise PixelNNError(f"label image {path} has {colours} colours (at most {MAX_RGB_CLASSES}): anti-aliased "
                               f"or a JPEG, not a label palette")
    if size is not None and (w, h) != (size, size):
        log.debug("resizing label image %s from %dx%d to %dx%d (nearest neighbour)", path, w, h, size, size)
        im = im.resize((size, size), Image.NEAREST)
    if im.mode == "RGB":
        return LabelImage("rgb", np.asarray(im, np.uint8))
    pal = None
    if im.mode == "P":
        raw = (im.getpalette() or []) + [0] * 768
        pal = np.array(raw[:768], np.uint8).reshape(256, 3)
    arr = np.asarray(im).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > MAX_INDEX_CLASS):
        raise PixelNNError(f"label image {path} has class values outside 0..{MAX_INDEX_CLASS} "
                           f"({int(arr.min())}..{int(arr.max())})")
    return LabelImage("index", arr, pal)


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _code_colours(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, np.int64)
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)


def id_to_relpath(exemplar_id: str) -> Path:
    """Where an exemplar's label image lies inside a label folder: ``<id>.png``, the id's slashes as folders.

    Raises a one-line PixelNNError for an id with an empty, ``.`` or ``..`` component, or a backslash.
    """
    parts = str(exemplar_id).split("/")
    if not exemplar_id or "\\" in exemplar_id or any(p in ("", ".", "..") for p in parts):
        raise PixelNNError(f"exemplar id {exemplar_id!r} cannot name a label file (empty, '.' or '..' component, "
                           f"or a backslash)")
    return Path(*parts[:-1], parts[-1] + ".png")


class LabelDir:
    """A label folder: one label image per exemplar id (module docstring), and its optional ``labels.json``.

    >>> labels = LabelDir("labels/shoes-foreground")                      # doctest: +SKIP
    >>> masks, classes = labels.load(["ut-zap50k-images/Boots/..."], 96)  # doctest: +SKIP
    >>> masks.shape, classes.kind                                         # doctest: +SKIP
    ((1, 96, 96), 'index')
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise PixelNNError(f"no label folder {self.path}; make one with `pixelnn labels foreground|face "
                               f"LIBRARY --out {self.path}` or put one <id>.png per exemplar id there")
        self.meta: dict[str, Any] | None = None
        meta_path = self.path / META
        if meta_path.is_file():
            from pixelnn.io import read_json

            meta = read_json(meta_path, "label-folder metadata", expect=dict)
            if meta.get("format") != FORMAT:
                raise PixelNNError(f"{meta_path} is not a {FORMAT} file")
            if meta.get("version", 0) > VERSION:
                raise PixelNNError(f"{meta_path} has version {meta['version']}; this PixelNN reads up to {VERSION}")
            if meta.get("kind") not in KINDS:
                raise PixelNNError(f"{meta_path}: kind must be one of {', '.join(KINDS)}, got {meta.get('kind')!r}")
            self.meta = meta
        self._declared = self._declared_classes()

    def _declared_classes(self) -> LabelSet | None:
        if not self.meta or not self.meta.get("classes"):
            return None
        where = self.path / META
        try:
            classes = self.meta["classes"]
            kind = self.meta["kind"]
            names = [str(c.get("name") or "") or None for c in classes]
            colors = np.array([c["color"] for c in classes], np.int64).reshape(len(classes), 3)
            ids = np.array([c["id"] for c in classes], np.int64) if kind == "index" else np.arange(len(classes))
        except (KeyError, TypeError, ValueError) as e:
            raise PixelNNError(f"{where}: every class needs an id (index kind) and an RGB color: {e}") from None
        if colors.min() < 0 or colors.max() > 255:
            raise PixelNNError(f"{where}: colours must be 0..255")
        if len(np.unique(ids)) != len(ids) or (kind == "rgb" and len(np.unique(_colour_codes(colors))) != len(ids)):
            raise PixelNNError(f"{where}: classes must be distinct")
        order = np.argsort(ids)
        return LabelSet(kind, ids[order], colors[order].astype(np.uint8),
                        [names[i] or f"class {ids[i]}" for i in order] if any(names) else None)

    def file_of(self, exemplar_id: str) -> Path:
        """The label image of an exemplar id (:func:`id_to_relpath`)."""
        return self.path / id_to_relpath(exemplar_id)

    def load(self, ids: Sequence[str], size: int) -> tuple[np.ndarray, LabelSet]:
        """The label images of ``ids`` as class ids.

        Parameters
        ----------
        ids : sequence of str
            Exemplar ids.
        size : int
            The exemplar size S.

        Returns
        -------
        labels : ndarray, (K, S, S) int64
            Class ids (``index``: the pixel values; ``rgb``: positions in the palette).
        classes : LabelSet
            The declared classes (``labels.json``), else the classes found in these images.

        Raises
        ------
        PixelNNError
            One line naming the file: missing or bad images, a kind that differs from the others' (or
            from ``labels.json``), a class ``labels.json`` does not list, too many colours.
        """
        images: list[LabelImage] = []
        files = [self.file_of(i) for i in ids]
        kind = self.meta["kind"] if self.meta else None
        for f in files:
            im = read_label_image(f, size)
            if kind is None:
                kind = im.kind
            elif im.kind != kind:
                why = f"{self.path / META} says {kind}" if self.meta else f"{files[0].name} is {kind}"
                raise PixelNNError(f"label image {f} is an {im.kind} image but {why}; a label folder holds one kind")
            images.append(im)
        if not images:
            return np.zeros((0, size, size), np.int64), self._declared or LabelSet(kind or "index", np.zeros(0, np.int64),
                                                                                  np.zeros((0, 3), np.uint8))
        if kind == "rgb":
            return self._load_rgb(images, files, size)
        return self._load_index(images, files, size)

    def _load_index(self, images: list[LabelImage], files: list[Path], size: int) -> tuple[np.ndarray, LabelSet]:
        labels = np.stack([im.array for im in images])
        present = np.unique(labels)
        declared = self._declared
        if declared is not None:
            for f, im in zip(files, images):
                unknown = np.setdiff1d(np.unique(im.array), declared.ids)
                if len(unknown):
                    raise PixelNNError(f"label image {f} has class {int(unknown[0])}, which {self.path / META} "
                                       f"does not list")
            return labels, declared
        pals = [im.png_palette for im in images]
        png_palette = pals[0] if all(p is not None and np.array_equal(p, pals[0]) for p in pals) else None
        colors = png_palette[present.clip(0, 255)] if png_palette is not None else index_colors(present)
        return labels, LabelSet("index", present, colors, None, png_palette)

    def _load_rgb(self, images: list[LabelImage], files: list[Path], size: int) -> tuple[np.ndarray, LabelSet]:
        codes = np.stack([_colour_codes(im.array) for im in images])  # (K, S, S)
        declared = self._declared
        if declared is not None:
            palette_codes = _colour_codes(declared.colors)
            for f, c in zip(files, codes):
                unknown = np.setdiff1d(np.unique(c), palette_codes)
                if len(unknown):
                    raise PixelNNError(f"label image {f} has colour {tuple(int(v) for v in _code_colours(unknown[0]))}, "
                                       f"which {self.path / META} does not list")
            classes = declared
        else:
            palette_codes = np.unique(codes)
            if len(palette_codes) > MAX_RGB_CLASSES:
                raise PixelNNError(f"the label images of {self.path} hold {len(palette_codes)} colours together (at most "
                                   f"{MAX_RGB_CLASSES})")
            classes = LabelSet("rgb", np.arange(len(palette_codes)), _code_colours(palette_codes))
        order = np.argsort(palette_codes)
        labels = order[np.searchsorted(palette_codes, codes, sorter=order)]
        return labels.astype(np.int64), classes


# --------------------------------------------------------------------------------------------------
# built-in sources


def foreground_masks(photos: np.ndarray, threshold: int = WHITE_THRESHOLD,
                     min_share: float = MIN_COMPONENT_SHARE) -> np.ndarray:
    """Foreground masks of objects photographed on a white background (product photos, e.g. shoes).

    1. White: pixels whose smallest channel is at least ``threshold`` (default 240).
    2. Background: the white regions (4-connected) that touch the image border. Everything else is
       foreground, so white enclosed by the object (a hole, a white sole seen from inside) is filled.
    3. Clean-up: foreground components (8-connected) smaller than ``min_share`` of the largest are
       dropped (JPEG specks near the border).

    A photo without any white border pixel is all foreground; an all-white one all background.

    Parameters
    ----------
    photos : ndarray, (N, H, W, 3) or (H, W, 3) uint8
    threshold : int
    min_share : float

    Returns
    -------
    ndarray, (N, H, W) or (H, W) bool
        True on the object.
    """
    from scipy import ndimage

    photos = np.asarray(photos)
    single = photos.ndim == 3
    if single:
        photos = photos[None]
    if photos.ndim != 4 or photos.shape[-1] != 3 or photos.dtype != np.uint8:
        raise PixelNNError(f"photos must be (N, H, W, 3) uint8, got {photos.shape} {photos.dtype}")
    white = photos.min(axis=-1) >= threshold  # (N, H, W)
    out = np.zeros(white.shape, bool)
    eight = np.ones((3, 3), bool)
    for i, w in enumerate(white):
        lab, _ = ndimage.label(w)  # 4-connected
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        fg = ~np.isin(lab, border[border > 0])
        comp, n = ndimage.label(fg, structure=eight)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            keep = np.flatnonzero(sizes >= min_share * sizes.max()) + 1
            fg = np.isin(comp, keep)
        out[i] = fg
    return out[0] if single else out


def face_masks(photos: np.ndarray, device: str = "cpu", batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Face masks of aligned face photos: where the face mesh of :func:`pixelnn.normals.normal_maps` covers
    the pixel (inside the face oval: forehead, cheeks, chin, with eyes and mouth; not hair, ears, neck).

    Returns
    -------
    masks : ndarray, (N, H, W) bool
        All False where no face was found.
    found : ndarray, (N,) bool
    """
    from pixelnn import normals

    fn = normals.normal_maps(np.asarray(photos), device=device, batch_size=batch_size)
    return fn.masks, fn.found


@dataclass
class LabelDirReport:
    """What :func:`write_label_dir` wrote."""

    path: Path
    images: int
    source: str
    class_pixels: dict[int, int] = field(default_factory=dict)
    empty: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        total = max(sum(self.class_pixels.values()), 1)
        shares = ", ".join(f"class {c}: {100 * n / total:.1f}%" for c, n in sorted(self.class_pixels.items()))
        extra = "".join(f"; {k.replace('_', ' ')}: {v}" for k, v in self.notes.items())
        return (f"{self.source} labels of {self.images} exemplars ({shares}; {self.empty} without foreground"
                f"{extra}) -> {self.path}")


def _iter_store(store: Any, batch_size: int) -> Iterable[tuple[list[str], np.ndarray]]:
    n = len(store)
    for s in range(0, n, batch_size):
        pos = np.arange(s, min(s + batch_size, n))
        yield store.ids_of(pos), store.take("photos", pos)


def write_label_dir(out: str | Path, pairs: Iterable[tuple[str, np.ndarray]], classes: LabelSet, source: str,
                    notes: dict[str, Any] | None = None, overwrite: bool = False,
                    extra_meta: dict[str, Any] | None = None) -> LabelDirReport:
    """Write a label folder of integer class masks, atomically (built in a temporary folder, ``labels.json``
    last, then renamed into place).

    Parameters
    ----------
    out : path
    pairs : iterable of (str, ndarray)
        Exemplar id and its class mask (S, S) int or bool (written as an 8-bit ``L`` PNG, values < 256).
    classes : LabelSet
        The classes (``index`` kind), recorded in ``labels.json``.
    source : str
        What made them (``foreground``, ``face``), recorded.
    notes : dict, optional
        Counts to record and report (e.g. ``{"no_face": 3}``); read once ``pairs`` is consumed, so a
        generator may fill it in.
    overwrite : bool
        Replace an existing folder (only once the new one is complete).
    extra_meta : dict, optional
        More entries for ``labels.json``.
    """
    from pixelnn.io import atomic_dir, write_json

    out = Path(out)
    notes = notes if notes is not None else {}
    counts: dict[int, int] = {int(c): 0 for c in classes.ids}
    n = empty = 0
    with atomic_dir(out, overwrite=overwrite, replaces=((META, FORMAT),), what="label") as tmp:
        for exemplar_id, mask in pairs:
            m = np.asarray(mask).astype(np.uint8)
            path = tmp / id_to_relpath(exemplar_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m, "L").save(path)
            values, cnt = np.unique(m, return_counts=True)
            for v, c in zip(values, cnt):
                counts[int(v)] = counts.get(int(v), 0) + int(c)
            empty += int(not m.any())
            n += 1
        meta = {"format": FORMAT, "version": VERSION, "kind": "index", "source": source, "images": n,
                "classes": classes.describe(), "class_pixels": {str(k): v for k, v in counts.items()},
                "without_foreground": empty, **notes, **(extra_meta or {})}
        write_json(tmp / META, meta)
    return LabelDirReport(out, n, source, counts, empty, dict(notes))


def library_path(library: str | Path) -> str | Path:
    """A model folder means its ``library/``; a library folder or store URL itself."""
    if "://" not in str(library) and (Path(library) / "library").is_dir():
        return Path(library) / "library"
    return library


def labels_command(source: str, library: str | Path, out: str | Path, threshold: int = WHITE_THRESHOLD,
                   device: str = "cpu", overwrite: bool = False, progress: bool = True,
                   batch_size: int = 256) -> LabelDirReport:
    """``pixelnn labels foreground|face LIBRARY_OR_MODEL_DIR --out LABEL_DIR``: a label folder of 0/1
    masks of every exemplar photo of a library (a model folder means its ``library/``).

    ``foreground``: :func:`foreground_masks` with ``threshold``; ``face``: :func:`face_masks` (a photo
    without a face is all background, counted as ``no_face``).
    """
    from tqdm.auto import tqdm

    from pixelnn.zarr_store import open_library

    if source not in ("foreground", "face"):
        raise PixelNNError(f"unknown label source {source!r}; valid: foreground, face")
    if not 0 <= threshold <= 255:
        raise PixelNNError(f"--threshold must be 0..255, got {threshold}")
    lib_path = library_path(library)
    store = open_library(lib_path)
    notes: dict[str, Any] = {"no_face": 0} if source == "face" else {}
    if source == "foreground":
        def make(photos: np.ndarray) -> np.ndarray:
            return foreground_masks(photos, threshold)

        classes = binary_labelset(("background", "foreground"))
        params: dict[str, Any] = {"threshold": threshold, "min_component_share": MIN_COMPONENT_SHARE}
    else:
        def make(photos: np.ndarray) -> np.ndarray:
            masks, found = face_masks(photos, device=device)
            notes["no_face"] += int((~found).sum())
            return masks

        classes = binary_labelset(("background", "face"))
        params = {"device": device}

    def pairs(bar: Any) -> Iterable[tuple[str, np.ndarray]]:
        for batch_ids, photos in _iter_store(store, batch_size):
            yield from zip(batch_ids, make(photos))
            bar.update(len(batch_ids))

    with tqdm(total=len(store), desc=f"{source} labels", unit="img", disable=not progress) as bar:
        return write_label_dir(out, pairs(bar), classes, source, notes, overwrite,
                               {"library": str(getattr(store, "url", None) or getattr(store, "root", None) or lib_path),
                                "params": params})
