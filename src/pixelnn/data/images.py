"""Decoding arbitrary image files into 8-bit RGB, and fitting them to a square without distortion.

Everything here is defensive: a file that cannot be used raises :class:`UnusableImage` whose
``reason`` is one of a small fixed set (:data:`SKIP_REASONS`), so callers can count skips.

Conversions applied by :func:`decode_image`:

* EXIF orientation is applied (``ImageOps.exif_transpose``).
* Grayscale (``1``, ``L``) is replicated to RGB; 16-bit grayscale (``I;16*``, and ``I`` with values
  above 255) is *scaled* (``v / 257``) to 8 bits, never clipped; float (``F``) images in [0, 1] are
  scaled by 255.
* Transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) is composited
  onto a WHITE background.
* ``CMYK``, ``YCbCr``, palette and other modes are converted by Pillow to RGB.
* Multi-frame files (GIF, TIFF, WebP) use their first frame.
* Only the formats of :data:`DECODE_FORMATS` are decoded, from the file's contents (a PNG named
  ``.jpg`` is read as a PNG); any other content is ``"corrupt"``.

Decompression bombs are refused: more than ``max_pixels`` pixels (64 MP by default) gives reason
``"too large"`` before the pixels are decoded (Pillow's own DecompressionBombWarning/Error are
also turned into that reason).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import IO, Iterator

import numpy as np
from PIL import Image, ImageOps

from pixelnn.errors import BadImageError

#: File extensions (lower case, with the dot) treated as images; anything else is ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

#: The Pillow formats decoded, whatever a file is named: those of :data:`IMAGE_EXTENSIONS` (JPEG includes
#: the multi-picture JPEGs of cameras). Pillow would also open PostScript (with Ghostscript, an outside program),
#: icons, PSDs and some 40 more formats from their contents; an image name on such a file is "corrupt".
DECODE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")

#: Refuse images with more pixels than this (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 64_000_000

#: Skip reasons (the keys of ``PrepareReport.skipped``).
CORRUPT = "corrupt"              # has an image extension but cannot be decoded (truncated, garbage, encrypted zip entry)
TOO_LARGE = "too large"          # more than max_pixels pixels, or a file too big to read
TOO_SMALL = "too small"          # smaller than the output size (would need more than max_upscale enlargement)
BAD_PAIR = "bad pair"            # paired task: the image cannot be split into two A|B halves
UNSAFE_PATH = "unsafe path"      # zip entry with an absolute path, a '..' component, or a symlink
NO_FACE = "no face"              # normals task: the face-mesh model finds no face in the photo
BAD_NAME = "name not UTF-8"     # a file (or folder) name that is not valid UTF-8: its id could not be stored
SKIP_REASONS = (CORRUPT, TOO_LARGE, TOO_SMALL, BAD_PAIR, UNSAFE_PATH, BAD_NAME, NO_FACE)

FITS = ("auto", "pad", "crop")

# Auto fit: a border pixel is "white" when all its channels are >= WHITE_LEVEL; an image has a white
# border when >= WHITE_BORDER_FRACTION of its border pixels are white; a collection is padded when
# >= PAD_IMAGE_FRACTION of the sampled images have a white border. (UT-Zappos: 0.94-1.0 per image;
# CelebA and AFHQ cats: mostly 0.0-0.3.)
WHITE_LEVEL = 235
WHITE_BORDER_FRACTION = 0.85
PAD_IMAGE_FRACTION = 0.75


class UnusableImage(BadImageError):
    """An image that is skipped; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@contextlib.contextmanager
def pil_limits(max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[None]:
    """Set Pillow's decompression-bomb limit to ``max_pixels`` and make its warning an error.

    Process-global (Pillow's limit is a module attribute): use around a decoding loop, not from
    several threads with different limits.
    """
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def decode_image(fp: str | os.PathLike | bytes | IO[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft_size: int | None = None) -> Image.Image:
    """Open an image file and return it as an oriented 8-bit ``RGB`` PIL image.

    Parameters
    ----------
    fp : path, bytes or binary file object
    max_pixels : int
        Refuse images with more pixels (reason ``"too large"``), checked from the header before
        decoding. Pillow's own bomb limit (``Image.MAX_IMAGE_PIXELS``, see :func:`pil_limits`) is
        also honoured: its DecompressionBombError (and its warning, when turned into an error)
        give ``"too large"`` as well.
    draft_size : int, optional
        For JPEGs, let the decoder downscale by a power of two (DCT scaling) as long as both sides
        stay >= ``draft_size``. Speeds up large photos; the size checks still see the full size
        through the ``original_size`` entry of the returned image's ``info``.

    Raises
    ------
    UnusableImage
        reason ``"corrupt"`` or ``"too large"``.
    """
    if isinstance(fp, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(fp)
    with contextlib.ExitStack() as stack:
        if isinstance(fp, (str, os.PathLike)):  # opened and closed here: Pillow keeps multi-frame files open
            try:
                fp = stack.enter_context(open(fp, "rb"))
            except OSError as e:
                raise UnusableImage(CORRUPT, f"cannot read: {e.strerror or e}") from None
        with warnings.catch_warnings():  # Pillow's notes on damaged files ("Corrupt EXIF data"): the file is used
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            return _decode(fp, max_pixels, draft_size)


def _decode(fp: IO[bytes], max_pixels: int, draft_size: int | None) -> Image.Image:
    try:
        # Pillow's own limit (Image.MAX_IMAGE_PIXELS) is left as set by the caller: see pil_limits
        im = Image.open(fp, formats=DECODE_FORMATS)
        w, h = im.size
        if w <= 0 or h <= 0:
            raise UnusableImage(CORRUPT, f"empty image {w}x{h}")
        if w * h > max_pixels:
            raise UnusableImage(TOO_LARGE, f"{w}x{h} is more than {max_pixels} pixels")
        if draft_size and im.format == "JPEG" and im.mode in ("RGB", "L"):
            im.draft(im.mode, (draft_size, draft_size))
        im.load()
        try:
            orientation = int(im.getexif().get(0x0112, 1))
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # broken EXIF: keep the pixels as stored
            orientation, oriented = 1, im
        if oriented is not None:
            im = oriented
        ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # size before any draft, oriented
        rgb = to_rgb8(im)
        rgb.info["original_size"] = (ow, oh)
        return rgb
    except UnusableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnusableImage(TOO_LARGE, str(e).splitlines()[0] if str(e) else "decompression bomb") from None
    except MemoryError:
        raise UnusableImage(TOO_LARGE, "out of memory while decoding") from None
    except Image.UnidentifiedImageError:
        raise UnusableImage(CORRUPT, "not a PNG, JPEG, GIF, BMP, TIFF or WebP image") from None
    except Exception as e:  # Pillow raises many types on corrupt data (OSError, SyntaxError, ValueError, ...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnusableImage(CORRUPT, msg) from None


def _white_composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _scale16(a: np.ndarray) -> np.ndarray:
    """16-bit values (0..65535) -> 8 bit by scaling (65535 -> 255), rounding, never clipping the range."""
    a = np.clip(a.astype(np.float64), 0, 65535)
    return np.rint(a / 257.0).astype(np.uint8)


def to_rgb8(im: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit ``RGB`` (transparency composited onto white)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        if mode in ("RGBa", "La"):  # premultiplied
            im = im.convert("RGBA" if mode == "RGBa" else "LA")
            mode = im.mode
        a = np.asarray(im)
        if mode == "LA":
            rgb = np.repeat(a[..., :1], 3, axis=-1)
        else:
            rgb = a[..., :3]
        return Image.fromarray(_white_composite(rgb, a[..., -1]), "RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if a.ndim == 3:  # some Pillow builds give (H, W, 1)
            a = a[..., 0]
        if mode == "I" and a.size and a.max() <= 255 and a.min() >= 0:
            g = a.astype(np.uint8)  # an 8-bit image stored in a 32-bit container
        else:
            g = _scale16(a)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=-1), "RGB")
    if mode == "F":
        with np.errstate(invalid="ignore"):  # NaN pixels (numpy warns when casting them): 0, as below
            a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(a.max()) if a.size else 0.0
        if hi <= 1.0:
            g = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        elif hi <= 255.0:
            g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        else:
            g = _scale16(a)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=-1), "RGB")
    if mode == "1":
        im = im.convert("L")
    return im.convert("RGB")  # L, CMYK, YCbCr, RGBX, LAB, HSV, ...


def fit_image(im: Image.Image, size: int, fit: str, *, max_upscale: float = 1.0,
              original_size: tuple[int, int] | None = None) -> np.ndarray:
    """Fit an RGB image into a ``size`` x ``size`` square without distortion.

    ``pad``: scale the whole image to fit inside the square and centre it on white.
    ``crop``: centre-crop the largest square and scale it to ``size``.

    Images that would need enlarging by more than ``max_upscale`` (1.0: never enlarge) raise
    :class:`UnusableImage` with reason ``"too small"``. The check uses ``original_size`` when given
    (the size before any JPEG draft downscaling).

    Returns
    -------
    ndarray, (size, size, 3) uint8
    """
    if fit not in ("pad", "crop"):
        raise ValueError(f"fit must be 'pad' or 'crop', got {fit!r}")
    w, h = im.size
    ow, oh = original_size or (w, h)
    side = max(ow, oh) if fit == "pad" else min(ow, oh)
    if side * max_upscale < size - 1e-9:
        raise UnusableImage(TOO_SMALL, f"{ow}x{oh} is smaller than {size}x{size} ({fit})")
    if fit == "crop":
        s = min(w, h)
        left, top = (w - s) / 2.0, (h - s) / 2.0
        if w == h == size:
            out = im
        else:
            out = im.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + s, top + s),
                            reducing_gap=3.0)
        return np.asarray(out, dtype=np.uint8).copy()
    scale = size / max(w, h)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    small = im if (nw, nh) == (w, h) else im.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    canvas[y:y + nh, x:x + nw] = np.asarray(small, dtype=np.uint8)
    return canvas


def split_pair(im: Image.Image, tolerance: float = 0.1) -> tuple[Image.Image, Image.Image]:
    """Split a pix2pix-style ``A|B`` image (two halves side by side) into ``(A, B)`` = (left, right).

    Raises :class:`UnusableImage` (reason ``"bad pair"``) when the width is odd or the halves are
    not roughly square (``|w/2 - h| > tolerance * h``).
    """
    w, h = im.size
    if w % 2:
        raise UnusableImage(BAD_PAIR, f"odd width {w}: cannot split into two halves")
    half = w // 2
    if abs(half - h) > tolerance * h:
        raise UnusableImage(BAD_PAIR, f"{w}x{h} is not two side-by-side halves (width should be ~2x height)")
    a, b = im.crop((0, 0, half, h)), im.crop((half, 0, w, h))
    for x in (a, b):
        x.info.pop("original_size", None)  # refers to the whole pair
    return a, b


def border_white_fraction(rgb: np.ndarray, width: int | None = None) -> float:
    """Fraction of the pixels in the image's border band whose channels are all >= WHITE_LEVEL."""
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    b = width or max(1, round(0.02 * min(h, w)))
    band = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                           rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)])
    return float((band.min(axis=1) >= WHITE_LEVEL).mean()) if len(band) else 0.0


def has_white_border(rgb: np.ndarray) -> bool:
    """Whether an image's border is (nearly) white: at least :data:`WHITE_BORDER_FRACTION` of its border pixels."""
    return bool(border_white_fraction(rgb) >= WHITE_BORDER_FRACTION)


def fit_from_borders(white_borders: list[bool]) -> str:
    """``'pad'`` when at least :data:`PAD_IMAGE_FRACTION` of the sampled images have a white border
    (:func:`has_white_border`), else (or with no sample) ``'crop'``."""
    if not white_borders:
        return "crop"
    return "pad" if sum(white_borders) >= PAD_IMAGE_FRACTION * len(white_borders) else "crop"


def choose_fit(samples: list[np.ndarray]) -> str:
    """``'pad'`` when most sampled images have a (nearly) white border, else ``'crop'``."""
    return fit_from_borders([has_white_border(s) for s in samples])


def is_grayscale(rgb: np.ndarray, max_diff: int = 24, mean_diff: float = 1.0) -> bool:
    """Whether an RGB uint8 image is essentially gray (channels equal up to JPEG noise)."""
    a = np.asarray(rgb, dtype=np.int16)
    d = a.max(axis=-1) - a.min(axis=-1)
    return bool(d.max() <= max_diff and d.mean() <= mean_diff)
