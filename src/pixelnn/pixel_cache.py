"""A content-addressed on-disk cache of exemplar pixel descriptors.

Describing the K = 11 retrieved exemplars (a VGG-16 pass over each of their stage-1 images) costs
as much as half the matching itself. The exemplars' descriptors depend only on their stage-1
image (or input, for the regressor descriptor) and on the descriptor (layers, PCA, weights), so
they can be stored once and read back: a 96x96 exemplar at 64 dims is 1.2 MB in float16.

Storing them for every exemplar of a large library is expensive (21 GB for 18k shoes), so the
cache is *lazy*: an exemplar is described the first time it is retrieved and read from disk
afterwards; ``pixelnn index --pixel-cache`` fills it for the whole library ahead of time.

Entries are keyed by a hash of the descriptor's fingerprint and of the image bytes, so they never
go stale: an exemplar removed and re-added with another photo, a refitted PCA or retrained
weights simply get new keys. Files are written atomically (temporary file, then rename), so
concurrent readers and writers (several web-app users) are safe.

Every entry read is checked: an unreadable or truncated file, an array of another shape or dtype than
the descriptor gives for that image (``(H * W, dims)`` float16), or one holding NaN or infinite values
is logged as a warning and recomputed (and rewritten), never used: the cache is only a copy of what
the descriptor computes, so a bad entry costs time, not a wrong output.

The cache grows with every new exemplar retrieved: each time its folder passes another
:data:`GROWTH_WARNING_BYTES` (1 GiB) during synthesis, one warning says so (``pixelnn cache info|clear``,
:mod:`pixelnn.caches`).

Descriptors are stored as float16. :func:`round_descriptors` applies the same rounding to freshly
computed descriptors, so matches never depend on whether an exemplar came from the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Descriptors wider than this are not cached (a full 1472-d hypercolumn is 27 MB per exemplar).
MAX_CACHED_DIMS = 256
#: A warning (one line, once per step) each time the cache folder grows past another multiple of this many bytes.
GROWTH_WARNING_BYTES = 2**30


def round_descriptors(d: torch.Tensor) -> torch.Tensor:
    """Round descriptors to float16 precision (what the cache stores), keeping float32 storage.

    Parameters
    ----------
    d : Tensor, (N, P, d) float32

    Returns
    -------
    Tensor, (N, P, d) float32
    """
    return d.to(torch.float16).to(torch.float32)


def descriptor_fingerprint(descriptor: Any) -> str:
    """A hex digest that changes whenever the descriptor would give other values.

    Covers the descriptor's name and dims, its PCA (mean and components) and, for descriptors
    built on a network of the project's own (the stage-1 regressor), that network's weights.
    """
    h = hashlib.sha256(f"{descriptor.name}|{descriptor.dims}|{getattr(descriptor, 'takes', '')}".encode())
    pca = getattr(descriptor, "pca", None)
    if pca is not None:
        h.update(pca.mean.numpy().tobytes())
        h.update(pca.components.numpy().tobytes())
    net = getattr(descriptor, "regressor", None)
    if net is not None:
        for name, t in sorted(net.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class PixelDescriptorCache:
    """Lazy, content-addressed store of per-image pixel descriptors.

    Parameters
    ----------
    root : path
        Cache folder (``LIB_DIR/pixel_cache`` for a library); one sub-folder per descriptor fingerprint.
    descriptor : callable
        Pixel descriptor: uint8 images (N, H, W, C) -> (N, P, d) float32 unit vectors.

    Notes
    -----
    If the folder cannot be written (a read-only library), the cache still computes descriptors
    and serves them; it only stops storing them.
    """

    def __init__(self, root: str | Path, descriptor: Callable[[np.ndarray], torch.Tensor]):
        self.descriptor = descriptor
        self.dir = Path(root) / f"{descriptor.name}-{descriptor_fingerprint(descriptor)}"
        self.writable = True
        self.hits = 0
        self.misses = 0
        self.root = Path(root)
        #: Bytes in the whole cache folder (every descriptor's), measured at the first write, then counted.
        self.size: int | None = None
        self.warn_every = GROWTH_WARNING_BYTES
        self._warned_at = 0  # the last multiple of warn_every warned about
        self._quiet = False  # fill(): the user asked for the whole cache
        self._size_lock = threading.Lock()

    def key(self, image: np.ndarray) -> str:
        """Hex key of one image (its shape, dtype and bytes)."""
        image = np.ascontiguousarray(image)
        h = hashlib.sha1(f"{image.shape}|{image.dtype}".encode())
        h.update(image.tobytes())
        return h.hexdigest()

    def path(self, image: np.ndarray) -> Path:
        k = self.key(image)
        return self.dir / k[:2] / f"{k}.npy"

    def _read(self, path: Path, pixels: int) -> np.ndarray | None:
        """The entry at ``path`` if it is a float16 (pixels, dims) array of finite values; None (recompute it) when
        it is missing, unreadable, of another shape or holds NaN/inf (each bad entry logs a warning)."""
        try:
            a = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as e:  # truncated or foreign file: recompute and overwrite
            log.warning("ignoring unreadable pixel-cache entry %s (recomputing it): %s", path, e)
            return None
        if a.dtype != np.float16 or a.shape != (pixels, self.descriptor.dims):
            log.warning("ignoring pixel-cache entry %s of shape %s %s, expected (%d, %d) float16 (recomputing it)",
                        path, a.shape, a.dtype, pixels, self.descriptor.dims)
            return None
        if not np.isfinite(a).all():
            log.warning("ignoring pixel-cache entry %s holding NaN or infinite values (recomputing it)", path)
            return None
        return a

    def _write(self, path: Path, a: np.ndarray) -> None:
        if not self.writable:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, a, allow_pickle=False)
                    written = f.tell()
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            self.writable = False
            log.warning("pixel-descriptor cache %s is not writable (%s); descriptors will be recomputed", self.dir, e)
            return
        self._grew(written)

    def _grew(self, nbytes: int) -> None:
        """Count ``nbytes`` written; warn once each time the folder passes another :attr:`warn_every` bytes."""
        with self._size_lock:
            if self.size is None:  # the first write: what is there already (this entry included)
                from pixelnn.caches import tree_size

                self.size = tree_size(self.root)[0]
                self._warned_at = self.size // self.warn_every
                return
            self.size += nbytes
            step = self.size // self.warn_every
            if step <= self._warned_at:
                return
            self._warned_at = step
        if not self._quiet:
            from pixelnn.caches import format_size

            log.warning("the pixel cache %s has grown to %s (each exemplar described is stored; "
                        "`pixelnn cache clear` frees it, --no-pixel-cache stops it)", self.root,
                        format_size(self.size))

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """Descriptors of ``images`` (N, H, W, C) uint8, from the cache where possible.

        Returns
        -------
        Tensor, (N, P, d) float32, rounded to float16 precision.
        """
        images = np.asarray(images)
        paths = [self.path(im) for im in images]
        pixels = int(images.shape[1] * images.shape[2]) if images.ndim >= 3 else 0  # P = H * W
        found = [self._read(p, pixels) for p in paths]
        missing = [i for i, a in enumerate(found) if a is None]
        self.hits += len(images) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.descriptor(images[missing]).to(torch.float16).cpu().numpy()  # (M, P, d)
            for i, a in zip(missing, fresh):
                self._write(paths[i], a)
                found[i] = a
        return torch.from_numpy(np.stack(found)).to(torch.float32)

    def fill(self, images: Any, batch_size: int = 32, progress: bool = True) -> int:
        """Describe and store every image of ``images`` (N, H, W, C) not yet cached; returns how many were added."""
        from tqdm import tqdm

        n = len(images)
        added = 0
        self._quiet = True  # the whole cache was asked for: no growth warnings
        try:
            with tqdm(total=n, desc="pixel descriptors", unit="img", disable=not progress) as bar:
                for start in range(0, n, batch_size):
                    batch = np.asarray(images[start:start + batch_size])
                    todo = [i for i, im in enumerate(batch) if not self.path(im).is_file()]
                    if todo:
                        self(batch[todo])
                        added += len(todo)
                    bar.update(len(batch))
        finally:
            self._quiet = False
        return added

    def __repr__(self) -> str:
        return f"PixelDescriptorCache({str(self.dir)!r}, hits={self.hits}, misses={self.misses})"
