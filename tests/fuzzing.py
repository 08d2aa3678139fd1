"""A seeded generator of malformed inputs and the harness that feeds them to PixelNN (issue 15, part 6).

Used by ``tests/test_fuzz.py`` (a fixed seed and a size that runs in about a minute) and
``benchmarks/fuzz.py`` (any seed, bigger runs). Nothing here is committed data: every file is made in a
temporary folder from a :class:`numpy.random.Generator`.

What is made (:func:`bad_image`): valid images of every mode and format Pillow writes (1x1, 100000x1, CMYK,
16-bit, palette, LA, alpha, animated, EXIF-rotated...), truncated and bit-flipped copies of them, zero-byte
and random files, text and other formats behind image names, header-only decompression bombs (PNG, GIF,
JPEG, BMP, TIFF, WebP, PPM), and paired A|B images of odd widths. :func:`write_zip` packs them with zip-slip
names, symlink entries, lying sizes, encrypted and unsupported members; :func:`write_tree` lays them out in
folders with symlinks, FIFOs, hidden files, non-UTF-8 and odd names.

The harness (:func:`run_cli`, :func:`call`) runs one case and sorts it into :class:`Tally`: a success, a
clean error (one line: a :class:`~pixelnn.errors.PixelNNError` from a direct call; exit status 2 and exactly
one ``pixelnn CMD: error: ...`` line on stderr from the CLI) or a *traceback* (anything else: another
exception type, a multi-line message, a second line on stderr, a warning printed with a failing run).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat
import struct
import time
import traceback
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from pixelnn.errors import PixelNNError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".tif", ".tiff", ".bmp")
FORMAT_EXT = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
#: (format, mode) pairs Pillow writes; the generator skips any a build cannot write.
WRITABLE = [("PNG", m) for m in ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "I;16")] + \
           [("JPEG", m) for m in ("RGB", "L", "CMYK")] + [("GIF", m) for m in ("P", "L")] + \
           [("BMP", m) for m in ("RGB", "L", "P", "1")] + \
           [("TIFF", m) for m in ("RGB", "RGBA", "L", "LA", "CMYK", "I;16", "I", "F", "1", "YCbCr")] + \
           [("WEBP", m) for m in ("RGB", "RGBA")]
SIZES = [(1, 1), (2, 1), (1, 2), (7, 13), (16, 16), (17, 33), (32, 32), (33, 17), (48, 48), (64, 32), (65, 32),
         (64, 31), (96, 48), (100, 40), (40, 100), (130, 64)]
#: Names in several scripts, with spaces, quotes, a newline and shell characters (never a slash).
ODD_NAMES = ["photo", "ph oto", "фото", "照片", "صورة", "emoji-😀", "quo'te\"s", "semi;colon", "$(echo x)",
             "new\nline", "tab\tbed", "-dash", "--flag-like", "x" * 200, "a.b.c", "CON", "nul\u200bwidth"]


@dataclass
class Tally:
    """Counts of one fuzz run, by area, and the cases that gave a traceback (kind, case, the evidence)."""

    tried: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)
    successes: dict[str, int] = field(default_factory=dict)
    clean_errors: dict[str, int] = field(default_factory=dict)
    tracebacks: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, area: str, outcome: str, case: str = "", evidence: str = "", inputs: int = 1) -> None:
        """Count one case (``outcome`` "ok", "error" or "traceback") that fed ``inputs`` malformed inputs."""
        self.tried[area] = self.tried.get(area, 0) + 1
        self.inputs[area] = self.inputs.get(area, 0) + inputs
        if outcome == "ok":
            self.successes[area] = self.successes.get(area, 0) + 1
        elif outcome == "error":
            self.clean_errors[area] = self.clean_errors.get(area, 0) + 1
        else:
            self.tracebacks.append((area, case, evidence))

    def merge(self, other: "Tally") -> None:
        for mine, theirs in ((self.tried, other.tried), (self.inputs, other.inputs), (self.successes, other.successes),
                             (self.clean_errors, other.clean_errors), (self.seconds, other.seconds)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.tracebacks += other.tracebacks
        self.notes += other.notes

    @property
    def total(self) -> int:
        return sum(self.tried.values())

    @property
    def total_inputs(self) -> int:
        return sum(self.inputs.values())

    def lines(self) -> list[str]:
        """The table of counts (cases, malformed inputs they fed, successes, clean errors, tracebacks, seconds)."""
        out = [f"{'area':<12} {'cases':>6} {'inputs':>6} {'ok':>6} {'errors':>6} {'tracebacks':>10} {'seconds':>8}"]
        for area in self.tried:
            tb = sum(1 for a, _, _ in self.tracebacks if a == area)
            out.append(f"{area:<12} {self.tried[area]:>6} {self.inputs.get(area, 0):>6} "
                       f"{self.successes.get(area, 0):>6} {self.clean_errors.get(area, 0):>6} {tb:>10} "
                       f"{self.seconds.get(area, 0.0):>8.1f}")
        out.append(f"{'total':<12} {self.total:>6} {self.total_inputs:>6} {sum(self.successes.values()):>6} "
                   f"{sum(self.clean_errors.values()):>6} {len(self.tracebacks):>10} "
                   f"{sum(self.seconds.values()):>8.1f}")
        out += self.notes
        for area, case, evidence in self.tracebacks[:20]:
            out.append(f"TRACEBACK {area}: {case}\n    " + evidence.strip().replace("\n", "\n    ")[-3000:])
        return out


# ---------------------------------------------------------------------------------------------- images
def _image(rng: np.random.Generator, mode: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    if mode in ("I;16", "I"):
        a = rng.integers(0, 65536 if mode == "I;16" else 70000, (h, w))
        if mode == "I" and rng.random() < 0.3:
            a = a - 40000  # negative values
        return Image.fromarray(a.astype(np.uint16 if mode == "I;16" else np.int32))  # I;16 or I
    if mode == "F":
        a = rng.normal(0.5, 2.0, (h, w)).astype(np.float32)
        if rng.random() < 0.3:
            a[0, 0] = np.nan
        return Image.fromarray(a, "F")
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode in ("RGB",):
        return rgb
    if mode == "P":
        im = rgb.quantize(int(rng.integers(2, 256)))
        if rng.random() < 0.3:
            im.info["transparency"] = 0
        return im
    if mode == "PA":
        im = rgb.quantize(16).convert("PA")
        return im
    return rgb.convert(mode) if mode != "RGBA" else Image.fromarray(
        rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def good_image(rng: np.random.Generator, size: tuple[int, int] | None = None) -> tuple[bytes, str, str]:
    """A valid image of a random (format, mode) and size: (bytes, extension, description)."""
    for _ in range(20):
        fmt, mode = WRITABLE[int(rng.integers(len(WRITABLE)))]
        wh = size or SIZES[int(rng.integers(len(SIZES)))]
        try:
            data = encode(_image(rng, mode, wh), fmt)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return data, FORMAT_EXT[fmt], f"{fmt} {mode} {wh[0]}x{wh[1]}"
    return encode(_image(rng, "RGB", (32, 32)), "PNG"), ".png", "PNG RGB 32x32"


def photo(rng: np.random.Generator, w: int = 64, h: int = 64, fmt: str = "PNG") -> bytes:
    """A usable photo: smooth colour blobs on white (so ``fit=auto`` sees a white border sometimes)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 250, np.uint8)
    for _ in range(3):
        cy, cx, r = rng.random() * h, rng.random() * w, 4 + rng.random() * min(w, h) / 3
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2] = rng.integers(0, 256, 3)
    return encode(Image.fromarray(img), fmt)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_bomb(rng: np.random.Generator) -> tuple[bytes, str, str]:
    """A tiny file whose header claims a huge (or zero) image: the decompression-bomb guard's case."""
    kind = ("png", "gif", "jpeg", "bmp", "tiff", "webp", "ppm")[int(rng.integers(7))]
    big = int(rng.choice([0, 65535, 100_000, 2**31 - 1]))
    other = int(rng.choice([1, 65535, 100_000]))
    w, h = (big, other) if rng.random() < 0.5 else (other, big)
    if kind == "png":
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
            + _png_chunk(b"IEND", b"")
        ext = ".png"
    elif kind == "gif":
        w, h = min(w, 65535), min(h, 65535)
        data = b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) \
            + b"\x02\x02\x44\x01\x00;"
        ext = ".gif"
    elif kind == "jpeg":
        w, h = min(w, 65535), min(h, 65535)
        sof = struct.pack(">BHHB", 8, h, w, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
        data = b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"
        ext = ".jpg"
    elif kind == "bmp":
        w, h = min(w, 2**31 - 1), min(h, 2**31 - 1)
        info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
        data = b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + info + b"\0" * 16
        ext = ".bmp"
    elif kind == "tiff":
        entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                   (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, max(h, 1)), (279, 4, 1, 4)]
        ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
        data = b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 4
        ext = ".tif"
    elif kind == "webp":
        w, h = min(max(w, 1), 2**24), min(max(h, 1), 2**24)
        vp8x = bytes([0x10, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
        body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
        data = b"RIFF" + struct.pack("<I", len(body)) + body
        ext = ".webp"
    else:
        data = f"P6\n{w} {h}\n255\n".encode() + b"\0" * 30
        ext = IMAGE_EXTS[int(rng.integers(len(IMAGE_EXTS)))]
    return data, ext, f"header bomb {kind} {w}x{h}"


def special_image(rng: np.random.Generator) -> tuple[bytes, str, str]:
    """Valid but awkward: animated GIF/WebP, multi-page TIFF, EXIF orientations (also invalid ones), long thin
    images (100000x1), an image over the web app's pixel limit, a progressive JPEG, a broken EXIF block."""
    kind = int(rng.integers(9))
    if kind == 0:
        frames = [_image(rng, "P", (24, 24)) for _ in range(int(rng.integers(2, 5)))]
        return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0), ".gif", \
            "animated GIF"
    if kind == 1:
        frames = [_image(rng, "RGB", (40, 40)) for _ in range(3)]
        return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]), ".tif", "multi-page TIFF"
    if kind == 2:
        frames = [_image(rng, "RGBA", (40, 40)) for _ in range(3)]
        try:
            return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), ".webp", "animated WebP"
        except (OSError, ValueError):
            return encode(frames[0], "PNG"), ".png", "PNG RGBA 40x40"
    if kind == 3:
        exif = Image.Exif()
        value = int(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 65535]))
        exif[0x0112] = value
        im = _image(rng, "RGB", (int(rng.integers(20, 90)), int(rng.integers(20, 90))))
        return encode(im, "JPEG", exif=exif.tobytes()), ".jpg", f"EXIF orientation {value}"
    if kind == 4:
        w, h = (100_000, 1) if rng.random() < 0.5 else (1, 100_000)
        return encode(Image.new("L", (w, h), int(rng.integers(256))), "PNG"), ".png", f"thin {w}x{h}"
    if kind == 5:
        return encode(Image.new("RGB", (1200, 1000), (200, 30, 30)), "PNG"), ".png", "1.2 MP flat PNG"
    if kind == 6:
        im = _image(rng, "RGB", (64, 64))
        return encode(im, "JPEG", progressive=True, quality=int(rng.integers(1, 100))), ".jpg", "progressive JPEG"
    if kind == 7:
        im = _image(rng, "RGB", (48, 48))
        junk = b"Exif\0\0" + rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        return encode(im, "JPEG", exif=junk), ".jpg", "broken EXIF"
    im = _image(rng, "RGB", (40, 40))
    icc = rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
    return encode(im, "PNG", icc_profile=icc), ".png", "garbage ICC profile"


def mutate(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """A damaged copy: truncated, bits flipped, a block overwritten, garbage inserted or appended, header lost."""
    kind = int(rng.integers(6))
    b = bytearray(data)
    if kind == 0 or len(b) < 8:
        cut = int(rng.integers(0, max(1, len(b))))
        return bytes(b[:cut]), f"truncated at {cut}/{len(b)}"
    if kind == 1:
        for _ in range(int(rng.integers(1, 12))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
        return bytes(b), "bits flipped"
    if kind == 2:
        i, n = int(rng.integers(len(b))), int(rng.integers(1, 64))
        b[i:i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        return bytes(b), "block overwritten"
    if kind == 3:
        i = int(rng.integers(len(b)))
        return bytes(b[:i]) + rng.integers(0, 256, int(rng.integers(1, 100)), dtype=np.uint8).tobytes() + bytes(b[i:]), \
            "garbage inserted"
    if kind == 4:
        return bytes(b) + rng.integers(0, 256, int(rng.integers(1, 2000)), dtype=np.uint8).tobytes(), \
            "garbage appended"
    return bytes(b[int(rng.integers(1, min(len(b), 16))):]), "header cut"


def not_an_image(rng: np.random.Generator) -> tuple[bytes, str]:
    """Bytes that are no image at all (or another kind of file) for a file with an image name."""
    kind = int(rng.integers(8))
    if kind == 0:
        return b"", "zero bytes"
    if kind == 1:
        return rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes(), "random bytes"
    if kind == 2:
        return "hello, I am a text file with an image's name\n".encode() * int(rng.integers(1, 50)), "text"
    if kind == 3:
        return b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><rect/></svg>", "SVG"
    if kind == 4:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a.png", photo(rng, 20, 20))
        return buf.getvalue(), "a zip"
    if kind == 5:
        return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "EPS"
    if kind == 6:
        return zlib.compress(b"\0" * 10000), "zlib stream"
    return b"\x89PNG\r\n\x1a\n", "PNG signature only"


def bad_image(rng: np.random.Generator) -> tuple[bytes, str, str]:
    """One malformed (or awkward but valid) image file: (bytes, extension, description)."""
    r = rng.random()
    if r < 0.25:
        data, ext, what = good_image(rng)
        data, how = mutate(rng, data)
        return data, ext, f"{what}, {how}"
    if r < 0.37:
        data, what = not_an_image(rng)
        return data, IMAGE_EXTS[int(rng.integers(len(IMAGE_EXTS)))], what
    if r < 0.50:
        return header_bomb(rng)
    if r < 0.65:
        return special_image(rng)
    if r < 0.75:  # the wrong extension (or an upper-case one)
        data, ext, what = good_image(rng)
        other = IMAGE_EXTS[int(rng.integers(len(IMAGE_EXTS)))]
        return data, other.upper() if rng.random() < 0.3 else other, f"{what} named {other}"
    if r < 0.85:  # pix2pix pairs: odd widths, not two squares
        w, h = [(65, 32), (64, 32), (63, 32), (64, 50), (2, 1), (3, 1), (128, 64), (96, 47)][int(rng.integers(8))]
        return encode(_image(rng, "RGB", (w, h)), "PNG"), ".png", f"pair {w}x{h}"
    data, ext, what = good_image(rng)
    return data, ext, what


def file_name(rng: np.random.Generator, i: int, ext: str) -> str:
    """A unique file name: plain most of the time, else an odd one (scripts, spaces, a newline, quotes...)."""
    stem = f"f{i:04d}"
    if rng.random() < 0.2:
        stem = f"{ODD_NAMES[int(rng.integers(len(ODD_NAMES)))]}-{i}"
    return stem + ext


# ---------------------------------------------------------------------------------------------- files
def write_tree(root: Path, rng: np.random.Generator, n_bad: int, n_good: int, *, pairs: bool = False,
               extras: bool = True) -> list[str]:
    """A folder of ``n_bad`` malformed files and ``n_good`` usable photos (A|B pairs when ``pairs``), some in
    nested (and split) folders, plus (``extras``) symlinks, a FIFO, hidden files, a non-UTF-8 name, a folder with
    an image name, a README and an identity file. Returns the descriptions of what was written."""
    root.mkdir(parents=True, exist_ok=True)
    what = []
    subdirs = ["", "", "", "a", "a/b", "a/b/c/d/e", "ünï", "sp ace"]
    for i in range(n_bad + n_good):
        if i < n_good:
            data = photo(rng, 128, 64) if pairs else photo(rng, int(rng.integers(40, 120)), int(rng.integers(40, 120)))
            ext, desc = ".png", "good photo"
        else:
            data, ext, desc = bad_image(rng)
        d = root / subdirs[int(rng.integers(len(subdirs)))]
        d.mkdir(parents=True, exist_ok=True)
        (d / file_name(rng, i, ext)).write_bytes(data)
        what.append(desc)
    if extras:
        good = next(iter(sorted(root.rglob("*.png"))), None)
        with contextlib.suppress(OSError):
            os.symlink("does-not-exist.png", root / "broken-link.png")
            os.symlink(".", root / "loop")  # a folder symlink to itself (not followed)
            os.symlink(root / "a", root / "link-to-a")
            if good is not None:
                os.symlink(good, root / "link-to-good.png")
            os.mkfifo(root / "fifo.png")
        (root / "folder.png").mkdir(exist_ok=True)
        (root / ".hidden.png").write_bytes(b"garbage")
        (root / "README.txt").write_text("not an image\n")
        (root / "identity_CelebA.txt").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
                                                   + b"\nf0000.png 7\nmalformed line here\n")
        with contextlib.suppress(OSError):
            fd = os.open(os.fsencode(root) + b"/bad-\xff\xfe-name.png", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, photo(rng, 64, 64))
            os.close(fd)
        what += ["symlinks", "fifo", "folder named .png", "hidden", "README", "identity file", "non-UTF-8 name"]
    return what


def _zip_entry(z: zipfile.ZipFile, name: str, data: bytes, *, symlink: bool = False, method: int = zipfile.ZIP_DEFLATED) -> None:
    info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
    info.compress_type = method
    if symlink:
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z.writestr(info, data)


def _patch_central(data: bytes, name: bytes, *, flags: int | None = None, method: int | None = None,
                   size: int | None = None) -> bytes:
    """Rewrite fields of one member's local and central headers in a finished zip (an encrypted flag, an unknown
    compression method, a lying uncompressed size)."""
    b = bytearray(data)
    for sig, off_flags, off_method, off_size, off_namelen, off_name in ((b"PK\x03\x04", 6, 8, 22, 26, 30),
                                                                        (b"PK\x01\x02", 8, 10, 24, 28, 46)):
        start = 0
        while (i := b.find(sig, start)) >= 0:
            n = struct.unpack_from("<H", b, i + off_namelen)[0]
            if bytes(b[i + off_name:i + off_name + n]) == name:
                if flags is not None:
                    struct.pack_into("<H", b, i + off_flags, flags)
                if method is not None:
                    struct.pack_into("<H", b, i + off_method, method)
                if size is not None:
                    struct.pack_into("<I", b, i + off_size, size)
            start = i + 4
    return bytes(b)


def write_zip(path: Path, rng: np.random.Generator, n_bad: int, n_good: int, *, pairs: bool = False,
              extras: bool = True) -> list[str]:
    """A zip of ``n_bad`` malformed and ``n_good`` usable images under random folders, plus (``extras``) zip-slip
    names, absolute and drive paths, symlink entries, duplicates, an encrypted member, an unknown compression
    method, a member that lies about its size, a nested zip, a NUL in a name, and __MACOSX junk."""
    what = []
    lying: list[bytes] = []
    with zipfile.ZipFile(path, "w") as z:
        tops = ["", "set/", "set/train/", "set/val/", "x/y/z/"]
        for i in range(n_bad + n_good):
            if i < n_good:
                data, ext, desc = (photo(rng, 128, 64) if pairs else photo(rng, 64, 64)), ".png", "good photo"
            else:
                data, ext, desc = bad_image(rng)
            _zip_entry(z, tops[int(rng.integers(len(tops)))] + file_name(rng, i, ext).replace("\n", "_"), data,
                       method=zipfile.ZIP_STORED if rng.random() < 0.3 else zipfile.ZIP_DEFLATED)
            what.append(desc)
        if extras:
            good = photo(rng, 64, 64)
            for name in ("../../evil.png", "/abs/evil.png", "C:\\evil.png", "a/../../evil.png", "..\\..\\evil.png",
                         "ok/../../../etc/evil.png"):
                _zip_entry(z, name, good)
            _zip_entry(z, "link.png", b"/etc/passwd", symlink=True)
            _zip_entry(z, "dup.png", good)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Duplicate name"
                _zip_entry(z, "dup.png", b"garbage")
            _zip_entry(z, "encrypted.png", good)
            _zip_entry(z, "method99.png", good)
            _zip_entry(z, "liar.png", good)
            _zip_entry(z, "inner.zip", b"PK\x05\x06" + b"\0" * 18)
            _zip_entry(z, "nul\0name.png", good)
            _zip_entry(z, "__MACOSX/._f0000.png", b"\0\x05\x16\x07junk")
            _zip_entry(z, "dir.png/", b"")
            _zip_entry(z, "identity_CelebA.txt", b"\xff\xfe binary \0 junk\nf0001.png 3 extra\n")
            lying = [b"encrypted.png", b"method99.png", b"liar.png"]
            what += ["zip-slip names", "symlink entry", "duplicate", "encrypted", "method 99", "lying size",
                     "nested zip", "NUL name", "__MACOSX", "identity file"]
    if lying:
        data = path.read_bytes()
        data = _patch_central(data, b"encrypted.png", flags=0x1)
        data = _patch_central(data, b"method99.png", method=99)
        data = _patch_central(data, b"liar.png", size=2**32 - 1)
        path.write_bytes(data)
    return what


def zip_bomb(path: Path, rng: np.random.Generator, mib: int = 300) -> None:
    """A zip whose ``bomb.png`` inflates ``mib`` MiB of zeros from ~1.4 MB (deflate level 1: 0.6 s to make; over prepare's 64 MiB file limit:
    skipped unread), a 40 MiB one under it (inflating ~200 times: skipped unread as a zip bomb), and two usable
    photos."""
    zeros = bytes(2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, size in (("bomb.png", mib), ("small-bomb.jpg", 40)):
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            for attr in ("_compresslevel", "compress_level"):  # what z.open(info) uses (the name differs by Python)
                if attr in type(info).__slots__:
                    setattr(info, attr, 1)
            with z.open(info, "w", force_zip64=True) as f:
                for _ in range(size):
                    f.write(zeros)
        for i in range(2):
            z.writestr(f"ok{i}.png", photo(rng, 64, 64))


def broken_zip(path: Path, rng: np.random.Generator) -> str:
    """A file named .zip that is not a readable zip: truncated, garbage, empty, its directory damaged."""
    kind = int(rng.integers(5))
    if kind == 0:
        path.write_bytes(b"")
        return "empty .zip"
    if kind == 1:
        path.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
        return "garbage .zip"
    write_zip(path, rng, 3, 2, extras=False)
    data = path.read_bytes()
    if kind == 2:
        path.write_bytes(data[:int(rng.integers(1, len(data)))])
        return "truncated zip"
    if kind == 3:
        b = bytearray(data)
        i = b.rfind(b"PK\x01\x02")
        for _ in range(8):
            j = int(rng.integers(i, len(b)))
            b[j] = int(rng.integers(256))
        path.write_bytes(bytes(b))
        return "damaged central directory"
    with zipfile.ZipFile(path, "w"):
        pass
    return "zip with no members"


# ---------------------------------------------------------------------------------------------- harness
class _Records(logging.Handler):
    """Collects the log records of WARNING and above that a command would print on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured():
    """stdout and stderr as a terminal would take them (UTF-8: stdout strict, stderr backslashreplace, so an
    unprintable file name fails as it would in a shell), log records (WARNING+) and Python warnings."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    box: dict[str, Any] = {"handler": handler}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # gradio's page objects of the in-process ``serve`` runs (whose launch is replaced) leave event loops that
        # the garbage collector reports later, in whatever case runs then; a real ``serve`` is its own process
        warnings.filterwarnings("ignore", message="unclosed event loop", category=ResourceWarning)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield box
        finally:
            root.removeHandler(handler)
            box["stdout"] = out.buffer.getvalue().decode("utf-8", "replace")
            box["stderr"] = err.buffer.getvalue().decode("utf-8", "replace")
            box["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]


#: What an error line looks like: ``pixelnn CMD: error: ...`` (``pixelnn: error: ...`` for a bad command).
ERROR_LINE = re.compile(r"^pixelnn( [a-z-]+)?: error: \S")


def run_cli(argv: list[str], tally: Tally, area: str, inputs: int = 1, per_input: bool = False) -> int | None:
    """Run ``pixelnn.cli.main(argv)`` in this process; exit status 0 is a success, 2 with exactly one
    ``pixelnn CMD: error: ...`` line on stderr (nothing else: no warning, no Python warning) a clean error.
    ``per_input`` (``synthesize``): one such line per failed input, and when some inputs were synthesized (a
    summary on stdout) their one-line warnings too;
    anything else (an exception, another status, more lines) is recorded as a traceback, and so is an error
    that only main's last line of defence caught (an OSError, ValueError or UnicodeError that no check turned
    into a PixelNNError): its traceback is recorded."""
    import pixelnn.cli as cli

    rc: Any = None
    tb = ""
    last_line: list[str] = []
    real_one_line = cli.one_line

    def spy(e: BaseException) -> str:  # main calls one_line only in its last line of defence
        last_line.append("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        return real_one_line(e)

    cli.one_line = spy
    with captured() as box:
        try:
            rc = cli.main(["-q", *argv])
        except SystemExit as e:  # argparse
            rc = e.code
        except BaseException:  # noqa: BLE001 (anything that escapes main is the bug we look for)
            tb = traceback.format_exc()
        finally:
            cli.one_line = real_one_line
    if last_line and not tb:
        tb = "caught only by main's last line of defence:\n" + last_line[0] + "\nstderr: " + box["stderr"]
    err_lines = [ln for ln in box["stderr"].splitlines() if ln.strip()]
    logs = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in box["handler"].records]
    case = " ".join(repr(a) if (not a or set(a) & set(" \n\t'\"")) else a for a in argv)
    evidence = tb or "\n".join([f"exit {rc}", *err_lines, *logs, *box["warnings"]])
    if tb or "Traceback" in box["stderr"]:
        tally.add(area, "traceback", case, evidence, inputs)
    elif rc == 0:
        if any("\n" in ln for ln in logs):
            tally.add(area, "traceback", case, "multi-line log record:\n" + evidence, inputs)
        else:
            tally.add(area, "ok", inputs=inputs)
    elif rc == 2 and err_lines and not box["warnings"] and (len(err_lines) == 1 or per_input) and \
            all(ERROR_LINE.match(ln) for ln in err_lines) and \
            (not logs or (per_input and box["stdout"].strip() and not any("\n" in ln for ln in logs))):
        tally.add(area, "error", inputs=inputs)
    else:
        tally.add(area, "traceback", case, evidence, inputs)
    return rc


def call(fn: Callable[..., Any], tally: Tally, area: str, case: str, *args: Any, **kwargs: Any) -> Any:
    """Call a library function: a return is a success, a one-line :class:`PixelNNError` a clean error, any other
    exception (or a message of several lines, or an empty one) a traceback. Returns the result or None."""
    try:
        with captured() as box:
            result = fn(*args, **kwargs)
    except PixelNNError as e:
        msg = str(e)
        if not msg.strip() or "\n" in msg or "\r" in msg:
            tally.add(area, "traceback", case, f"{type(e).__name__} not one line: {msg!r}")
        else:
            tally.add(area, "error")
        return None
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        tally.add(area, "traceback", case, traceback.format_exc())
        return None
    if box["warnings"]:
        tally.add(area, "traceback", case, "warnings: " + "; ".join(box["warnings"]))
    elif any("\n" in r.getMessage() for r in box["handler"].records):
        tally.add(area, "traceback", case, "multi-line log record: " + "; ".join(
            repr(r.getMessage()) for r in box["handler"].records))
    else:
        tally.add(area, "ok")
    return result


@contextlib.contextmanager
def timed(tally: Tally, area: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        tally.seconds[area] = tally.seconds.get(area, 0.0) + time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- junk values
JUNK_STRINGS = ["", " ", "abc", "-1", "0", "1", "3", "-0", "1e999", "-1e999", "nan", "NaN", "inf", "-inf", "1.5",
                "0x10", "1_000", "９", "٣", "1e-320", "99999999999999999999999", "9" * 5000, "1,2", "½", "None", "true",
                "[]", "{}", "-", "--", "\x00", "\n", "é", "😀", "' OR 1=1 --", "../../etc/passwd", "%s%s%n", "$(id)",
                "\udcff", "1 2", "2147483648", "-2147483649", "4.0", "3.", ".5", "+7", "1e3", "whole", "1-3", "1+4",
                "1,7,11,whole", "0-0", "5-1", "1--3"]


def junk_value(rng: np.random.Generator) -> str:
    """A junk option value: a string from :data:`JUNK_STRINGS` or a random number (huge, negative, tiny)."""
    r = rng.random()
    if r < 0.55:
        return JUNK_STRINGS[int(rng.integers(len(JUNK_STRINGS)))]
    if r < 0.75:
        return str(int(rng.integers(-10, 100)))
    if r < 0.9:
        return repr(float(rng.normal(0, 10) * 10.0 ** int(rng.integers(-3, 12))))
    return "".join(chr(int(c)) for c in rng.integers(32, 0x3000, int(rng.integers(1, 8))))


def junk_object(rng: np.random.Generator) -> Any:
    """A junk page value: None, numbers (NaN, huge, bool), strings, lists, dicts, arrays, bytes."""
    choices: list[Callable[[], Any]] = [
        lambda: None, lambda: junk_value(rng), lambda: float("nan"), lambda: float("inf"), lambda: 10 ** 400,
        lambda: -(10 ** 30), lambda: True, lambda: int(rng.integers(-5, 50)), lambda: float(rng.normal(0, 100)),
        lambda: [1, 2], lambda: {"a": 1}, lambda: np.zeros(3), lambda: b"\xff\x00", lambda: object(),
        lambda: complex(1, 1), lambda: np.float64("nan"), lambda: np.int64(7), lambda: (),
    ]
    return choices[int(rng.integers(len(choices)))]()


def junk_drawing(rng: np.random.Generator, size: int = 64) -> Any:
    """A junk sketch-pad value: arrays of any shape and dtype, dicts with odd keys, lists, strings."""
    kind = int(rng.integers(14))
    if kind == 0:
        return None
    if kind == 1:
        return {}
    if kind == 2:
        return {"composite": None, "layers": []}
    if kind == 3:
        shape = tuple(int(s) for s in rng.integers(0, 6, int(rng.integers(0, 5))))
        return rng.integers(0, 256, shape).astype(rng.choice(["uint8", "int64", "float32", "bool"]))
    if kind == 4:
        return {"composite": rng.integers(0, 256, (size, size, int(rng.choice([1, 2, 3, 4, 5])))).astype(np.uint8)}
    if kind == 5:
        return {"composite": "not an image"}
    if kind == 6:
        return {"composite": [[1, 2], [3]]}
    if kind == 7:
        return np.full((size, size, 4), 255, np.uint8)  # blank
    if kind == 8:
        a = np.full((size, size, 4), 255, np.uint8)
        a[10:20, 10:40, :3] = 0
        return {"composite": a, "layers": [a[..., 3]], "background": None}
    if kind == 9:
        return rng.random((size, size, 3)) * float(rng.choice([1.0, 255.0, 1e9, np.nan]))
    if kind == 10:
        return {"composite": np.zeros((0, 0, 4), np.uint8)}
    if kind == 11:
        return "data:image/png;base64,iVBORw0KGgo="
    if kind == 12:
        return {"composite": np.full((1, 100_000, 4), 0, np.uint8)}
    return [np.zeros((4, 4, 4), np.uint8)]


__all__ = ["Tally", "bad_image", "broken_zip", "call", "captured", "good_image", "header_bomb", "junk_drawing",
           "junk_object", "junk_value", "mutate", "photo", "run_cli", "special_image", "timed", "write_tree",
           "write_zip"]


# ---------------------------------------------------------------------------------------------- the campaign
#: Inputs per area at scale 1 (tests/test_fuzz.py); benchmarks/fuzz.py multiplies them.
SIZES_AT_SCALE_1 = {"decode": 300, "prepare_runs": 30, "broken_zips": 8, "synthesize_files": 40,
                    "synthesize_cli": 12, "web_files": 150, "web_drawings": 120, "web_options": 150,
                    "web_regions": 30, "cli_options": 160}


@dataclass
class Fixture:
    """What the campaign works against: a tiny superres model with its library, a photo, a dataset, a
    synthesis result and a label folder (for transfer), and the pipeline and web app over the model."""

    root: Path
    model: Path
    data: Path
    photo: Path
    tiny_input: Path
    result: Path
    labels: Path
    pipe: Any
    app: Any


def make_fixture(root: Path) -> Fixture:
    import torch

    from pixelnn.cli import main
    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.web import WebApp
    from tests.conftest import make_tiny_library

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    model, data = make_tiny_library(root / "lib")
    rng = np.random.default_rng(12345)
    photo_path = root / "photo.png"
    photo_path.write_bytes(photo(rng, 64, 64))
    tiny_input = root / "input.png"
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tiny_input)
    with captured():
        assert main(["-q", "synthesize", str(tiny_input), "--model", str(model), "--out", str(root / "results"),
                     "--num-outputs", "2"]) == 0
        assert main(["-q", "labels", "foreground", str(model), "--out", str(root / "labels")]) == 0
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    app = WebApp(pipe, max_upload_bytes=200_000, max_upload_pixels=1_000_000, work_dir=root / "web-work")
    return Fixture(root, model, data, photo_path, tiny_input, root / "results" / "input", root / "labels", pipe, app)


def _files(root: Path, rng: np.random.Generator, n: int) -> list[tuple[Path, str]]:
    """``n`` malformed image files in ``root`` (flat): (path, description)."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        data, ext, desc = bad_image(rng)
        p = root / file_name(rng, i, ext)
        p.write_bytes(data)
        out.append((p, desc))
    return out


def fuzz_decode(fx: Fixture, rng: np.random.Generator, n: int, tally: Tally) -> None:
    """Every malformed file through the decoder and both readers of ``pixelnn synthesize`` (photo, input)."""
    from pixelnn.data.images import decode_image
    from pixelnn.pipeline import load_image_file

    cfg = fx.pipe.regressor.config
    with timed(tally, "decode"):
        for p, desc in _files(fx.root / "decode", rng, n):
            data = p.read_bytes()
            call(decode_image, tally, "decode", f"decode_image({desc})", data, max_pixels=4_000_000)
            fit = "pad" if rng.random() < 0.5 else "crop"
            call(load_image_file, tally, "decode", f"load_image_file({desc}, photo)", p, 32, fit=fit,
                 max_pixels=4_000_000, max_bytes=1_000_000)
            call(load_image_file, tally, "decode", f"load_image_file({desc}, input)", p, None, expect=cfg)


def fuzz_prepare(fx: Fixture, rng: np.random.Generator, runs: int, broken: int, tally: Tally) -> None:
    """``pixelnn prepare`` on folders and zips of malformed files, alone and mixed with good photos, for the
    superres, paired and edges tasks (canny; one HED run), and on broken zips."""
    from pixelnn.data.prepare import prepare_dataset
    from pixelnn.config import TaskConfig

    base = fx.root / "prepare"
    with timed(tally, "prepare"):
        for r in range(runs):
            task = ("superres", "paired", "edges")[r % 3]
            n_bad, n_good = int(rng.integers(3, 20)), int(rng.choice([0, 0, 1, 3, 6]))
            if r == 2:  # the one HED run gets photos to derive
                n_good = 3
            # odd source and output names: not UTF-8, a newline, a leading dash, spaces
            src = base / ["src{}", "src-\udcff{}", "src new\nline {}", "-src{}"][r % 4].format(r)
            out = base / ["out{}", "out-\udcfe{}", "out\n{}", "-out {}"][(r // 4) % 4].format(r)
            if r % 2:
                src = src.with_suffix(".zip")
                base.mkdir(parents=True, exist_ok=True)
                write_zip(src, rng, n_bad, n_good, pairs=task == "paired", extras=rng.random() < 0.7)
            else:
                write_tree(src, rng, n_bad, n_good, pairs=task == "paired", extras=rng.random() < 0.7)
            argv = ["prepare", str(src), "--out", str(out), "--task", task,
                    "--size", str(int(rng.choice([16, 32]))), "--factor", "4",
                    "--fit", str(rng.choice(["auto", "pad", "crop"])),
                    "--direction", str(rng.choice(["AtoB", "BtoA"]))]
            if task == "edges":
                argv += ["--edge-method", "hed" if r == 2 else "canny", "--hed-scale", "1"]
            if rng.random() < 0.3:
                argv += ["--limit", str(int(rng.integers(1, 5)))]
            run_cli(argv, tally, "prepare", inputs=n_bad + n_good)
        for r in range(broken):
            z = base / f"broken{r}.zip"
            base.mkdir(parents=True, exist_ok=True)
            broken_zip(z, rng)
            run_cli(["prepare", str(z), "--out", str(base / f"bout{r}"), "--task", "superres", "--size", "16"],
                    tally, "prepare")
        bomb = base / "bomb.zip"
        zip_bomb(bomb, rng)
        run_cli(["prepare", str(bomb), "--out", str(base / "bomb-out"), "--task", "superres", "--size", "16",
                 "--factor", "4"], tally, "prepare", inputs=4)
        # the library call: tiny file-size and pixel limits (zip members over them, lying or not, are skipped)
        for r in range(3):
            z = base / f"limits{r}.zip"
            write_zip(z, rng, 6, 3)
            call(prepare_dataset, tally, "prepare", f"prepare_dataset(limits {r})", z, base / f"lout{r}",
                 TaskConfig(name="superres", size=16, factor=4), progress=False, max_file_bytes=4000,
                 max_pixels=3000)


def fuzz_synthesize(fx: Fixture, rng: np.random.Generator, n_files: int, n_cli: int, tally: Tally) -> None:
    """Folders of malformed files through :func:`synthesize_files` (every failure one line; the good ones
    synthesized) and ``pixelnn synthesize`` on single files, folders, list files and globs, with --from-photo."""
    from pixelnn.options import SynthesisOptions
    from pixelnn.synthesize import synthesize_files

    base = fx.root / "synth"
    files = _files(base / "in", rng, n_files)
    with timed(tally, "synthesize"):
        for from_photo in (False, True):
            out = base / f"direct-{from_photo}"
            report = call(synthesize_files, tally, "synthesize", f"synthesize_files(folder, from_photo={from_photo})",
                          [str(base / "in")], fx.model, out, SynthesisOptions(num_outputs=1), from_photo=from_photo,
                          pipeline=fx.pipe, progress=False)
            if report is not None:
                for p, why in report.failed:
                    if not why.strip() or "\n" in why:
                        tally.add("synthesize", "traceback", f"{p}", f"failure not one line: {why!r}")
                    else:
                        tally.add("synthesize", "error")
                for _ in report.done:
                    tally.add("synthesize", "ok")
        lst = base / "inputs.txt"
        lst.write_bytes(b"# a list file\n" + b"\n".join(os.fsencode(p.name) for p, _ in files[:5])
                        + b"\nnot-there.png\n\xff\xfe\n")
        for i in range(n_cli):
            kind = i % 6
            if kind == 0:
                inputs = [str(files[int(rng.integers(len(files)))][0])]
            elif kind == 1:
                inputs = [str(base / "in")]
            elif kind == 2:
                inputs = [str(lst)]
            elif kind == 3:
                inputs = [str(base / "in" / "*.png"), str(fx.tiny_input)]
            elif kind == 4:
                inputs = [str(p) for p, _ in files[i:i + 3]] + [str(base / "nothing-here")]
            else:
                inputs = [str(base), str(fx.photo)]
            argv = ["synthesize", *inputs, "--model", str(fx.model), "--out", str(base / f"cli{i}"),
                    "--num-outputs", "1", "--pca-dims", "16"]
            if i % 2:
                argv.append("--from-photo")
            run_cli(argv, tally, "synthesize", per_input=True)


def fuzz_web(fx: Fixture, rng: np.random.Generator, n_files: int, n_draw: int, n_opts: int, n_regions: int,
             tally: Tally) -> None:
    """The web app's upload handlers called directly: photos and inputs (malformed files), sketches (junk
    canvases), the Options panel (:meth:`WebApp.options_from_page` with junk values) and regions."""
    from pixelnn.web import PAGE_OPTIONS

    app = fx.app
    files = _files(fx.root / "web", rng, n_files)
    paths: list[Any] = [p for p, _ in files] + [str(fx.root / "web"), "", None, str(fx.root / "missing.png"),
                                                "/dev/null", "/proc/self/mem", str(fx.photo)]
    with timed(tally, "web"):
        for p, desc in files:
            call(app.read_photo, tally, "web", f"read_photo({desc})", p)
            call(app.make_input, tally, "web", f"make_input(photo, {desc})", "photo", photo_path=str(p))
            call(app.make_input, tally, "web", f"make_input(input, {desc})", "input", input_path=str(p))
        for i in range(n_draw):
            d = junk_drawing(rng)
            call(app.make_input, tally, "web", f"make_input(sketch, {type(d).__name__} #{i})", "sketch", drawing=d)
            call(app.mask_from_drawing, tally, "web", f"mask_from_drawing({type(d).__name__} #{i})", d)
        for i in range(n_opts):
            keys = list(PAGE_OPTIONS) + ["bogus", "where"]
            values = {str(k): junk_object(rng) for k in rng.choice(keys, int(rng.integers(0, 6)), replace=False)}
            if rng.random() < 0.5:  # sensible strings for the choice fields, to get further
                for k in ("mode", "color", "descriptor"):
                    if k in values and rng.random() < 0.5:
                        values[k] = str(rng.choice({"mode": ["matched", "coherent", "global", "authors", "x"],
                                                    "color": ["rgb", "luminance", "y"],
                                                    "descriptor": ["hypercolumn", "regressor", "z"]}[k]))
            labels = None if rng.random() < 0.5 else {
                str(junk_value(rng)) if rng.random() < 0.3 else "kind": junk_object(rng) if rng.random() < 0.5
                else ["blob", str(junk_value(rng))]}
            like = None if rng.random() < 0.6 else [paths[int(rng.integers(len(paths)))]
                                                     for _ in range(int(rng.integers(1, 11)))]
            opts = call(app.options_from_page, tally, "web", f"options_from_page({values!r}, {labels!r}, {like!r})",
                        values, labels, like)
            if opts is not None and rng.random() < 0.2:  # the resolved options must also run or fail cleanly
                call(app.resolved, tally, "web", f"resolved({opts!r})", opts)
        size = app.size
        for i in range(n_regions):
            kind = int(rng.integers(6))
            mask: Any = (rng.random((size, size)) < 0.5) if kind < 3 else \
                [np.zeros((size, size), bool), rng.random((size + 1, size)) < 0.5, "mask", None][kind - 3]
            labels = {"kind": ["blob"]} if rng.random() < 0.4 else {"kind": [junk_value(rng)]}
            like = None if rng.random() < 0.6 else [paths[int(rng.integers(len(paths)))]]
            ex = None if rng.random() < 0.5 else str(rng.choice(["a000", "a001", junk_value(rng)]))
            call(app.region_from_page, tally, "web", f"region_from_page(kind {kind}, {labels!r}, {like!r}, {ex!r})",
                 mask, labels, like, ex)
        for source in ("drawing", "", None, "PHOTO", 3):
            call(app.make_input, tally, "web", f"make_input({source!r})", source)


#: Flags whose valid values would start long work: only cheap valid values (or junk) are tried.
_CHEAP = {"steps": ["0", "1", "-1", "nan", "abc", "1e999", "0.5", "", "٣"],
          "minutes": ["0", "-1", "nan", "inf", "0.0005", "abc", "1e-300"],
          "engine": ["local", "LOCAL", "", "ray2"], "address": ["", "auto", "::", "ray://nowhere:1"]}
#: Positional arguments and path flags kept as given (their values are made by the campaign).
_FIXED = {"out", "model", "data", "labels", "task", "edge_method"}


def _cli_bases(fx: Fixture, out: Path) -> dict[str, list[str]]:
    """Every command with valid arguments (cheap to run: tiny data, 0 steps, no server)."""
    lib = fx.model / "library"
    return {
        "prepare": ["prepare", str(fx.data.parent / "photos"), "--out", str(out), "--task", "superres", "--size", "16",
                    "--factor", "4"],
        "train": ["train", str(fx.data), "--out", str(out), "--steps", "0"],
        "baseline-train": ["baseline-train", str(fx.data), "--out", str(out), "--steps", "0"],
        "index": ["index", str(fx.data), "--model", str(fx.model), "--out", str(out)],
        "library": ["library", "info", str(lib)],
        "synthesize": ["synthesize", str(fx.tiny_input), "--model", str(fx.model), "--out", str(out),
                       "--num-outputs", "1"],
        "labels": ["labels", "foreground", str(fx.model), "--out", str(out)],
        "transfer": ["transfer", str(fx.result), "--labels", str(fx.labels), "--out", str(out)],
        "evaluate": ["evaluate", str(fx.model), "--out", str(out), "--data", str(fx.root / "no-such-data")],
        "report": ["report", str(fx.root / "no-report"), "--out", str(out)],
        "serve": ["serve", "--model", str(fx.model)],
        "demo": ["demo", "--data", str(fx.root / "prepare" / "broken0.zip"), "--out", str(out)],
    }


def _flag_values(rng: np.random.Generator, action: Any, bad_paths: list[str]) -> list[str]:
    dest = action.dest
    if action.nargs == 0:
        return []
    if dest in _CHEAP:
        return [str(rng.choice(_CHEAP[dest]))]
    n = int(rng.integers(1, 4)) if action.nargs in ("+", "*") else 1
    vals = []
    for _ in range(n):
        if action.choices is not None and rng.random() < 0.6:
            choices = [c for c in action.choices if c not in ("hed", "normals", "ray", "face")] or list(action.choices)
            vals.append(str(choices[int(rng.integers(len(choices)))]))
        elif action.type in (int, float) or rng.random() < 0.5:
            vals.append(junk_value(rng))
        else:
            vals.append(bad_paths[int(rng.integers(len(bad_paths)))])
    return vals


def fuzz_cli_options(fx: Fixture, rng: np.random.Generator, n: int, tally: Tally) -> None:
    """Every command with 1-3 of its flags set to junk (random strings, huge, negative, NaN, unicode; bad paths),
    sometimes an unknown flag or a junk positional. ``serve`` never binds: its launch is replaced."""
    import argparse

    import pixelnn.web as web
    from pixelnn.cli import build_parser

    photos = fx.data.parent / "photos"
    photos.mkdir(exist_ok=True)
    for i in range(6):
        (photos / f"p{i}.png").write_bytes(photo(rng, 64, 64))
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bad = _files(fx.root / "cli-bad", rng, 12)
    bad_paths = [str(p) for p, _ in bad] + [str(fx.root), "", "-", str(fx.root / "missing"), "/dev/null",
                                            "\udcff.png", "a" * 300, "x\0y", str(fx.photo)]
    # folders that look like a model, a dataset or a library but hold junk
    junk_dirs = []
    for name, files in (("empty", {}), ("junk-model", {"config.json": b"{not json", "regressor.safetensors": b"x"}),
                        ("junk-data", {"dataset.json": b'{"task": 3}', "train/photos.npy": b"\x93NUMPY"}),
                        ("junk-library", {"library.json": b"[]", "store.json": bytes(range(256))})):
        d = fx.root / "cli-junk" / name
        d.mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        junk_dirs.append(str(d))
    in_paths = bad_paths + junk_dirs + [str(fx.root / ("n" * 300)), str(fx.root / "x\0y")]
    out_paths = [str(p) for p, _ in bad[:3]] + ["/dev/null", str(fx.photo / "sub"), str(fx.root / ("o" * 300)), "",
                 "   ", str(fx.root / "cli-junk" / "empty")]
    started = []
    saved = web.launch, web.warm_up
    web.launch = lambda *a, **k: started.append(k)  # a valid serve stops here: no server is started
    web.warm_up = lambda app: None
    try:
        with timed(tally, "cli-options"):
            commands = list(_cli_bases(fx, fx.root))
            for i in range(n):
                cmd = commands[i % len(commands)]
                argv = _cli_bases(fx, fx.root / "cli" / f"{i}")[cmd]
                parser = sub.choices[cmd]
                flags = [a for a in parser._actions if a.option_strings and a.dest not in _FIXED
                         and not isinstance(a, argparse._HelpAction)]
                for action in rng.choice(flags, min(len(flags), int(rng.integers(1, 4))), replace=False):
                    argv += [str(rng.choice(action.option_strings)), *_flag_values(rng, action, bad_paths)]
                r = rng.random()
                if r < 0.05:
                    argv.append("--no-such-flag")
                elif r < 0.1:
                    argv.insert(1, junk_value(rng))
                if rng.random() < 0.25:  # a junk path for one of the paths (never a relative --out: the cwd)
                    spots = [j for j, a in enumerate(argv) if a.startswith(str(fx.root))]
                    if spots:
                        j = spots[int(rng.integers(len(spots)))]
                        pool = out_paths if argv[j - 1] == "--out" else in_paths
                        argv[j] = pool[int(rng.integers(len(pool)))]
                if cmd in ("train", "baseline-train") and "--steps" not in argv[4:]:
                    argv += ["--steps", "0"]
                run_cli(argv, tally, "cli-options")
    finally:
        web.launch, web.warm_up = saved
    tally.notes.append(f"serve: {len(started)} valid runs stopped before binding")


def campaign(root: Path, seed: int = 0, scale: float = 1.0, areas: tuple[str, ...] | None = None) -> Tally:
    """The whole fuzz run: :func:`fuzz_decode`, :func:`fuzz_prepare`, :func:`fuzz_synthesize`, :func:`fuzz_web`
    and :func:`fuzz_cli_options` with :data:`SIZES_AT_SCALE_1` times ``scale`` inputs, from ``seed``."""
    n = {k: max(1, round(v * scale)) for k, v in SIZES_AT_SCALE_1.items()}
    tally = Tally()
    t0 = time.perf_counter()
    fx = make_fixture(root / "fixture")
    tally.seconds["setup"] = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    todo = areas or ("decode", "prepare", "synthesize", "web", "cli-options")
    if "decode" in todo:
        fuzz_decode(fx, np.random.default_rng([seed, 1]), n["decode"], tally)
    if "prepare" in todo:
        fuzz_prepare(fx, np.random.default_rng([seed, 2]), n["prepare_runs"], n["broken_zips"], tally)
    if "synthesize" in todo:
        fuzz_synthesize(fx, np.random.default_rng([seed, 3]), n["synthesize_files"], n["synthesize_cli"], tally)
    if "web" in todo:
        fuzz_web(fx, np.random.default_rng([seed, 4]), n["web_files"], n["web_drawings"], n["web_options"],
                 n["web_regions"], tally)
    if "cli-options" in todo:
        if "prepare" not in todo:  # demo's broken zip
            (root / "fixture" / "prepare").mkdir(parents=True, exist_ok=True)
            broken_zip(root / "fixture" / "prepare" / "broken0.zip", rng)
        fuzz_cli_options(fx, np.random.default_rng([seed, 5]), n["cli_options"], tally)
    return tally
