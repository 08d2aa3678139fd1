"""Region-level control (issue 14): masks, the per-pixel region map, the ``--region`` flag.

"Resynthesize an image using the eye from this image and the nose from that one" (paper section 2):
:attr:`pixelnn.options.SynthesisOptions.regions` lists :class:`~pixelnn.options.Region` layers, each a
mask and an exemplar set (labels, like-photos or ids). The pipeline matches the pixels of each region
only against that set's own K nearest exemplars; see docs/synthesis.md for the whole story.

>>> import numpy as np
>>> from pixelnn.options import Region
>>> top = np.zeros((4, 4), bool); top[:2] = True
>>> left = np.zeros((4, 4), bool); left[:, :1] = True
>>> region_map([Region(top, exemplars=["a"]), Region(left, exemplars=["b"])], 4)   # later regions win
array([[2, 1, 1, 1],
       [2, 1, 1, 1],
       [2, 0, 0, 0],
       [2, 0, 0, 0]], dtype=int16)

Kept free of torch (the CLI parses ``--region`` before loading a model).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from pixelnn.errors import PixelNNError
from pixelnn.options import REGION_FILTERS, Region, decode_mask, encode_mask

#: The region map's value of pixels outside every region (they use the default set).
DEFAULT_REGION = 0
_FLAG = re.compile(r"^(?P<mask>.+?):(?P<key>[^:=]+)=(?P<value>.*)$")
_EXPECT = "a mask is a PNG of the output size, S x S pixels, nonzero = inside"


def load_mask(mask: str | Path | np.ndarray, size: int, name: str | None = None) -> np.ndarray:
    """A region mask as an (S, S) bool array, checked.

    Parameters
    ----------
    mask : path, inline text or ndarray
        A PNG (or any image Pillow reads: nonzero in any colour channel = inside, alpha ignored), the
        inline text of :func:`pixelnn.options.encode_mask`, or an (S, S) bool / numeric array.
    size : int
        S, the output size.
    name : str, optional
        What to call the mask in messages (default: the file name, or "the mask").

    Returns
    -------
    ndarray, (S, S) bool

    Raises
    ------
    PixelNNError
        One line: no such file, not an image, wrong size, or empty (no pixel inside).
    """
    if isinstance(mask, np.ndarray):
        a = decode_mask(encode_mask(mask))  # the same checks and conversion as stored masks
        name = name or "the mask"
    elif str(mask).startswith("packbits:"):
        a, name = decode_mask(str(mask)), name or "the inline mask"
    else:
        from pixelnn.data.images import UnusableImage, decode_image

        path = Path(mask)
        name = name or path.name
        if not path.is_file():
            raise PixelNNError(f"no such mask file: {path} ({_EXPECT})")
        try:
            im = decode_image(str(path))
        except (UnusableImage, OSError, ValueError) as e:
            raise PixelNNError(f"mask {name} is not an image ({e}); {_EXPECT}") from None
        a = np.asarray(im).any(axis=2)
    if a.shape != (size, size):
        raise PixelNNError(f"mask {name} is {a.shape[1]}x{a.shape[0]}; this model's outputs are {size}x{size} "
                           f"({_EXPECT})")
    if not a.any():
        raise PixelNNError(f"mask {name} is empty (no nonzero pixel); {_EXPECT}")
    return a


def resolve_regions(regions: Sequence[Region], size: int) -> tuple[Region, ...]:
    """The regions with every mask read, checked (:func:`load_mask`) and stored inline, the file it came from
    kept as ``source``: options that reproduce the result without the mask files."""
    out = []
    for i, r in enumerate(regions, 1):
        mask = load_mask(r.mask, size, name=None if not r.inline else f"of region {i}")
        out.append(r if r.inline else Region(encode_mask(mask), r.where, r.exemplars, r.like, source=r.mask))
    return tuple(out)


def region_masks(regions: Sequence[Region], size: int) -> np.ndarray:
    """(R, S, S) bool: the masks of the regions, in order."""
    if not regions:
        return np.zeros((0, size, size), bool)
    return np.stack([load_mask(r.mask, size, name=r.source) for r in regions])


def region_map(regions: Sequence[Region], size: int) -> np.ndarray:
    """The region of every output pixel, (S, S) int16: 0 = the default set, r = ``regions[r - 1]``.

    Overlaps follow the order of ``regions``: a later region wins over an earlier one where both masks
    are set (layers painted in order).
    """
    out = np.full((size, size), DEFAULT_REGION, np.int16)
    for r, mask in enumerate(region_masks(regions, size), 1):
        out[mask] = r
    return out


def set_ranks(ranks: Sequence[int], n: int) -> tuple[int, ...]:
    """An output's exemplar set (0-based ranks) within a set of ``n`` neighbours: rank r is the set's
    rank ``r mod n``, so that a region whose set has fewer neighbours than the outputs use (one clicked
    exemplar, a small identity) still gives every output, reusing its exemplars. Unchanged when every
    rank is below n."""
    return tuple(sorted({int(r) % n for r in ranks}))


def blend_groups(region: np.ndarray, neighbours: Sequence[np.ndarray]) -> np.ndarray:
    """(S, S) int16: ``region`` with the sets that retrieved the same neighbours merged (their common border
    is no border for :func:`pixelnn.compose.blend_borders`: both sides copy from the same exemplars).

    ``neighbours``: per set (0 = default, then each region), its neighbours' library positions in rank
    order (``SynthesisResult.region_neighbours``, or the rows of ``correspondences.npz``'s
    ``region_neighbours`` without their -1 padding).
    """
    first: dict[tuple[int, ...], int] = {}
    group = np.array([first.setdefault(tuple(int(q) for q in np.asarray(n) if q >= 0), s)
                      for s, n in enumerate(neighbours)], np.int16)
    return group[np.asarray(region)]


def border_pixels(region: np.ndarray) -> np.ndarray:
    """(S, S) bool: pixels with a 4-neighbour in another region (both sides of every border)."""
    region = np.asarray(region)
    out = np.zeros(region.shape, bool)
    dh = region[:, 1:] != region[:, :-1]
    dv = region[1:, :] != region[:-1, :]
    out[:, 1:] |= dh
    out[:, :-1] |= dh
    out[1:, :] |= dv
    out[:-1, :] |= dv
    return out


def parse_region(text: str) -> Region:
    """The CLI's ``--region MASK.png:FILTER``: ``MASK.png:KEY=VALUE`` (a label, as ``--where``),
    ``MASK.png:like=PHOTO[,PHOTO]`` or ``MASK.png:exemplars=ID[,ID]``; a one-line PixelNNError otherwise.

    The mask file itself is read when the pipeline checks the options (its size is the model's).
    """
    m = _FLAG.match(str(text).strip())
    if not m or not m["value"].strip() or not m["key"].strip():
        raise PixelNNError(f"--region expects MASK.png:KEY=VALUE (a label), MASK.png:like=PHOTO or "
                           f"MASK.png:exemplars=ID,ID; got {text!r}")
    mask, key, value = m["mask"].strip(), m["key"].strip(), m["value"].strip()
    if key == "exemplars":
        return Region(mask, exemplars=[v.strip() for v in value.split(",") if v.strip()])
    if key == "like":
        return Region(mask, like=[v.strip() for v in value.split(",") if v.strip()])
    if key == "where":
        raise PixelNNError(f"--region takes a label directly, MASK.png:KEY=VALUE (e.g. Subcategory=Sneakers), "
                           f"not where=; filters: a label, {', '.join(f for f in REGION_FILTERS if f != 'where')}")
    return Region(mask, where={key: [value]})
