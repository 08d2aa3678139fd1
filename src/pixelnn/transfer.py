"""Label transfer through the correspondences (the paper's conclusion: "if training images are
augmented with semantic label masks, these labels can be transferred using our correspondences").

Every output pixel of a synthesis names the exemplar and the pixel it was copied from
(``correspondences.npz``), so a label image per exemplar gives every output a label map: output
pixel (y, x) takes the label of pixel (``source_y``, ``source_x``) of its exemplar. Over the O outputs
of one input, a per-pixel majority vote gives a consensus map and its agreement.

>>> from pixelnn.labels import LabelDir                                         # doctest: +SKIP
>>> t = transfer_result(read_correspondences("results/shoe"), LabelDir("labels/shoes"))  # doctest: +SKIP
>>> t.labels.shape, t.consensus.shape, float(t.agreement.mean())                # doctest: +SKIP
((72, 96, 96), (96, 96), 0.97)

The array functions (:func:`transfer_labels`, :func:`consensus`, :func:`overlay`) work on any
correspondences, e.g. a :class:`~pixelnn.pipeline.SynthesisResult`'s in memory; :func:`transfer_command`
is ``pixelnn transfer``, which reads a result folder and writes the label maps next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pixelnn.errors import PixelNNError
from pixelnn.labels import LabelDir, LabelSet

TRANSFER_FORMAT = "pixelnn-label-transfer"
TRANSFER_VERSION = 1
TRANSFER_MANIFEST = "transfer.json"
#: Share of the label colour in an overlay.
OVERLAY_ALPHA = 0.5
TIE_BREAK = "smallest class id"
#: Classes named in the summary line of a transfer.
MAX_LISTED = 6


# --------------------------------------------------------------------------------------------------
# arrays


def transfer_labels(exemplar_labels: np.ndarray, exemplar_index: np.ndarray, source_y: np.ndarray,
                    source_x: np.ndarray) -> np.ndarray:
    """The label of the exemplar pixel every output pixel was copied from.

    Parameters
    ----------
    exemplar_labels : ndarray, (K, H, W) int
        Label maps of K exemplars, in exemplar coordinates.
    exemplar_index : ndarray, (O, S, S) int
        Which of the K each output pixel came from: ``correspondences.npz``'s ``exemplar_index`` with the
        labels of its ``exemplar_ids``, or ``library_position`` (``SynthesisResult.exemplar``) with the
        labels of the whole library (K = N).
    source_y, source_x : ndarray, (O, S, S) int
        The source pixel in that exemplar.

    Returns
    -------
    ndarray, (O, S, S), the dtype of ``exemplar_labels``
        ``exemplar_labels[exemplar_index, source_y, source_x]``.

    Raises
    ------
    PixelNNError
        Arrays of different shapes, an index or source pixel outside the label maps.
    """
    lab = np.asarray(exemplar_labels)
    idx, sy, sx = (np.asarray(a).astype(np.int64, copy=False) for a in (exemplar_index, source_y, source_x))
    if lab.ndim != 3:
        raise PixelNNError(f"exemplar labels must be (K, H, W), got shape {lab.shape}")
    if not idx.shape == sy.shape == sx.shape:
        raise PixelNNError(f"exemplar_index, source_y and source_x differ in shape: {idx.shape}, {sy.shape}, {sx.shape}")
    k, h, w = lab.shape
    for name, a, n in (("exemplar index", idx, k), ("source_y", sy, h), ("source_x", sx, w)):
        if a.size and (a.min() < 0 or a.max() >= n):
            raise PixelNNError(f"{name} {int(a.max()) if a.max() >= n else int(a.min())} is outside the label "
                               f"maps (0..{n - 1})")
    return lab[idx, sy, sx]


def consensus(labels: np.ndarray, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel majority vote over outputs.

    Parameters
    ----------
    labels : ndarray, (O, S, S) int
        Transferred label maps of O outputs (class ids >= 0).
    num_classes : int, optional
        Class ids are 0..num_classes-1 (checked); default: the ids present.

    Returns
    -------
    label : ndarray, (S, S) int64
        The class most outputs give the pixel; a tie goes to the smallest class id.
    agreement : ndarray, (S, S) float32
        Share of the outputs that vote for the winner, in [1/O, 1] (1: all agree).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] == 0:
        raise PixelNNError(f"labels must be (O, S, S) with O >= 1, got shape {labels.shape}")
    if num_classes is not None:
        if labels.min() < 0 or labels.max() >= num_classes:
            raise PixelNNError(f"class ids must be 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
        classes = np.arange(num_classes)
    else:
        classes = np.unique(labels)
    counts = np.stack([(labels == c).sum(axis=0) for c in classes])  # (C, S, S), ascending ids
    win = counts.argmax(axis=0)  # the first maximum: the smallest id among tied classes
    agreement = counts.max(axis=0).astype(np.float32) / np.float32(labels.shape[0])
    return classes[win].astype(np.int64), agreement


def overlay(images: np.ndarray, labels: np.ndarray, color_table: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Images blended with the colours of their labels, ``(1 - alpha) * image + alpha * colour``.

    Parameters
    ----------
    images : ndarray, (..., S, S, 3) uint8
    labels : ndarray, (..., S, S) int
        Class ids.
    color_table : ndarray, (M, 3) uint8
        Colour of every class id (:meth:`pixelnn.labels.LabelSet.color_table`).
    alpha : float
        In [0, 1].

    Returns
    -------
    ndarray, (..., S, S, 3) uint8
    """
    if not 0.0 <= alpha <= 1.0:
        raise PixelNNError(f"overlay alpha must be in [0, 1], got {alpha}")
    colors = np.asarray(color_table)[np.asarray(labels)].astype(np.float32)
    out = (1.0 - alpha) * np.asarray(images, np.float32) + alpha * colors
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# --------------------------------------------------------------------------------------------------
# result folders


@dataclass
class Correspondences:
    """The correspondences of a result folder (``correspondences.npz``, :func:`pixelnn.pipeline.save_result`).

    Attributes
    ----------
    exemplar_ids : list of str
        The result's exemplars (its neighbours; with regions, the union of every set's).
    exemplar_index : ndarray, (O, S, S) int64
        Index into ``exemplar_ids`` of every output pixel's source.
    library_position : ndarray, (O, S, S) int64
    source_y, source_x : ndarray, (O, S, S) int64
    output_files : list of str
        The outputs' image files (``output_001.png`` ...), from ``manifest.json``.
    region : ndarray, (S, S) int16, optional
    """

    exemplar_ids: list[str]
    exemplar_index: np.ndarray
    library_position: np.ndarray
    source_y: np.ndarray
    source_x: np.ndarray
    output_files: list[str]
    region: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.exemplar_index.shape[-1])

    @classmethod
    def from_result(cls, result: Any) -> "Correspondences":
        """The correspondences of a :class:`~pixelnn.pipeline.SynthesisResult` in memory, as
        :func:`~pixelnn.pipeline.save_result` would write them."""
        from pixelnn.provenance import exemplar_ranks

        return cls(list(result.neighbour_ids), exemplar_ranks(result.exemplar, result.neighbours),
                   np.asarray(result.exemplar, np.int64), np.asarray(result.source_y, np.int64),
                   np.asarray(result.source_x, np.int64),
                   [f"output_{o + 1:03d}.png" for o in range(len(result.outputs))], result.region)


def read_correspondences(result_dir: str | Path) -> Correspondences:
    """The correspondences of a result folder written by ``pixelnn synthesize``.

    Raises a one-line PixelNNError for a folder that is not a complete result, or a corrupt one.
    """
    import zipfile

    from pixelnn.io import read_json
    from pixelnn.pipeline import MANIFEST_FORMAT

    d = Path(result_dir)
    if not (d / "manifest.json").is_file():
        raise PixelNNError(f"{d} is not a synthesis result (no manifest.json); make one with `pixelnn synthesize`")
    manifest = read_json(d / "manifest.json", "synthesis manifest", expect=dict)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise PixelNNError(f"{d / 'manifest.json'} is not a {MANIFEST_FORMAT} manifest")
    path = d / "correspondences.npz"
    if not path.is_file():
        raise PixelNNError(f"{d} has no correspondences.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise PixelNNError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                           f"(truncated or damaged?)") from None
    missing = [k for k in ("exemplar_index", "library_position", "source_y", "source_x", "exemplar_ids")
               if k not in arrays]
    if missing:
        raise PixelNNError(f"{path} lacks {', '.join(missing)}")
    idx = arrays["exemplar_index"].astype(np.int64)
    if idx.ndim != 3 or idx.shape[1] != idx.shape[2]:
        raise PixelNNError(f"{path}: exemplar_index must be (O, S, S), got {idx.shape}")
    outputs = manifest.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise PixelNNError(f"{d / 'manifest.json'}: 'outputs' should be a list of objects")
    files = [o.get("file") for o in outputs]
    if len(files) != len(idx) or not all(files):
        raise PixelNNError(f"{d / 'manifest.json'} lists {len(files)} outputs but the correspondences hold {len(idx)}")
    ids = [str(i) for i in arrays["exemplar_ids"].tolist()]
    if idx.size and idx.max() >= len(ids):
        raise PixelNNError(f"{path}: exemplar_index {int(idx.max())} is beyond its {len(ids)} exemplar_ids")
    return Correspondences(ids, idx, arrays["library_position"].astype(np.int64), arrays["source_y"].astype(np.int64),
                           arrays["source_x"].astype(np.int64), files, arrays.get("region"))


@dataclass
class LabelTransfer:
    """Labels transferred to the outputs of one result.

    Attributes
    ----------
    labels : ndarray, (O, S, S) int64
        Class id of every output pixel.
    consensus : ndarray, (S, S) int64
        Majority vote over the outputs (:func:`consensus`).
    agreement : ndarray, (S, S) float32
        Share of the outputs voting for it.
    classes : LabelSet
        The classes (their colours, names, and how to write maps back).
    used_ids : list of str
        The exemplars the outputs copied from, whose label images were read.
    """

    labels: np.ndarray
    consensus: np.ndarray
    agreement: np.ndarray
    classes: LabelSet
    used_ids: list[str]


def transfer_result(corr: Correspondences, label_dir: LabelDir) -> LabelTransfer:
    """Transfer a label folder's labels to every output of a result, with the consensus.

    Only the label images of exemplars some output pixel was copied from are read (a retrieved
    neighbour no pixel came from needs none).
    """
    used, index = np.unique(corr.exemplar_index, return_inverse=True)
    used_ids = [corr.exemplar_ids[int(i)] for i in used]
    ex_labels, classes = label_dir.load(used_ids, corr.size)  # (U, S, S)
    labels = transfer_labels(ex_labels, index.reshape(corr.exemplar_index.shape), corr.source_y, corr.source_x)
    label, agreement = consensus(labels)
    return LabelTransfer(labels, label, agreement, classes, used_ids)


def _read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise PixelNNError(f"missing result image {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise PixelNNError(f"cannot read {path}: {e}") from None


def _class_pixels(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def save_transfer(t: LabelTransfer, result_dir: str | Path, out_dir: str | Path, corr: Correspondences,
                  label_dir: LabelDir, alpha: float = OVERLAY_ALPHA, overwrite: bool = False) -> Path:
    """Write a transfer into ``out_dir`` (built under a temporary name, ``transfer.json`` last, renamed into place).

    Files: ``label_001.png``... (per output, in the label folder's kind: class values as ``L``/``I;16``/``P``,
    or the RGB palette colours), ``overlay_001.png``... (the output blended with its labels' colours),
    ``consensus.png`` (same encoding), ``agreement.png`` (8-bit, ``round(255 * agreement)``),
    ``consensus_overlay.png`` (on ``stage1.png``), ``labels.npz`` (``labels`` (O, S, S), ``consensus``,
    ``agreement`` float32, ``class_ids``, ``class_colors``) and ``transfer.json`` (classes, per-output
    class pixel counts, mean agreement, the exemplars' label files).
    """
    from pixelnn.io import atomic_dir, write_json

    result_dir, out_dir = Path(result_dir), Path(out_dir)
    lut = t.classes.color_table()
    outputs = []
    with atomic_dir(out_dir, overwrite=overwrite, replaces=((TRANSFER_MANIFEST, TRANSFER_FORMAT),),
                    what="label transfer") as tmp:
        for o, name in enumerate(corr.output_files):
            image = _read_rgb(result_dir / name)
            lab_name, ov_name = f"label_{o + 1:03d}.png", f"overlay_{o + 1:03d}.png"
            t.classes.to_image(t.labels[o]).save(tmp / lab_name)
            Image.fromarray(overlay(image, t.labels[o], lut, alpha)).save(tmp / ov_name)
            outputs.append({"output": name, "labels": lab_name, "overlay": ov_name,
                            "class_pixels": _class_pixels(t.labels[o])})
        t.classes.to_image(t.consensus).save(tmp / "consensus.png")
        Image.fromarray(np.rint(t.agreement * 255).astype(np.uint8), "L").save(tmp / "agreement.png")
        stage1 = result_dir / "stage1.png"
        base = _read_rgb(stage1) if stage1.is_file() else np.full(t.consensus.shape + (3,), 255, np.uint8)
        Image.fromarray(overlay(base, t.consensus, lut, alpha)).save(tmp / "consensus_overlay.png")
        dtype = np.int16 if t.labels.max(initial=0) < 2**15 else np.int32
        np.savez_compressed(tmp / "labels.npz", labels=t.labels.astype(dtype), consensus=t.consensus.astype(dtype),
                            agreement=t.agreement.astype(np.float32), class_ids=t.classes.ids.astype(np.int64),
                            class_colors=t.classes.colors.astype(np.uint8))
        write_json(tmp / TRANSFER_MANIFEST, {
            "format": TRANSFER_FORMAT, "version": TRANSFER_VERSION, "result": str(result_dir),
            "label_dir": str(label_dir.path), "kind": t.classes.kind, "classes": t.classes.describe(),
            "num_outputs": len(t.labels), "overlay_alpha": alpha,
            "consensus": {"labels": "consensus.png", "agreement": "agreement.png", "overlay": "consensus_overlay.png",
                          "tie_break": TIE_BREAK, "mean_agreement": round(float(t.agreement.mean()), 5),
                          "unanimous_share": round(float((t.agreement == 1).mean()), 5),
                          "class_pixels": _class_pixels(t.consensus)},
            "outputs": outputs,
            "exemplars": {i: str(label_dir.file_of(i)) for i in t.used_ids},
        })
    return out_dir


def transfer_command(result_dirs: Sequence[str | Path], labels: str | Path, out: str | Path | None = None,
                     alpha: float = OVERLAY_ALPHA, overwrite: bool = False) -> list[str]:
    """``pixelnn transfer RESULT_DIR... --labels LABEL_DIR [--out DIR]``: one line of summary per result.

    Each result's transfer goes to ``RESULT_DIR/labels`` by default; with ``--out``, to ``DIR`` for one
    result and ``DIR/<result folder name>`` for several. An existing transfer folder is replaced only
    with ``overwrite`` (and only when it is a transfer folder). Every result is checked before anything is written.
    """
    from pixelnn.io import check_replaceable

    if not result_dirs:
        raise PixelNNError("no result folders given")
    if not 0.0 <= alpha <= 1.0:
        raise PixelNNError(f"--alpha must be in [0, 1], got {alpha}")
    label_dir = LabelDir(labels)
    dirs = [Path(d) for d in result_dirs]
    names = [d.name for d in dirs]
    if out is not None and len(dirs) > 1 and len(set(names)) < len(names):
        raise PixelNNError("several result folders have the same name; transfer them with one --out each")
    corrs = [read_correspondences(d) for d in dirs]
    targets = [d / "labels" if out is None else Path(out) if len(dirs) == 1 else Path(out) / d.name for d in dirs]
    for t in targets:
        if t.exists() and not overwrite:
            raise PixelNNError(f"{t} already exists; pass --overwrite to replace it")
        check_replaceable(t, ((TRANSFER_MANIFEST, TRANSFER_FORMAT),), "label transfer")
    lines = []
    for d, corr, target in zip(dirs, corrs, targets):
        t = transfer_result(corr, label_dir)
        save_transfer(t, d, target, corr, label_dir, alpha=alpha, overwrite=overwrite)
        present = [c for c in t.classes.describe() if (t.consensus == c["id"]).any()]
        shares = ", ".join(f"{c['name'] or c['id']} {100 * float((t.consensus == c['id']).mean()):.1f}%"
                           for c in present[:MAX_LISTED]) + (f", ... ({len(present)} classes)"
                                                             if len(present) > MAX_LISTED else "")
        lines.append(f"{d}: {len(t.labels)} label maps from {len(t.used_ids)} exemplars; consensus {shares}; "
                     f"mean agreement {float(t.agreement.mean()):.3f} -> {target}")
    return lines


def read_transfer(out_dir: str | Path) -> dict[str, Any]:
    """``labels.npz`` and ``transfer.json`` of a transfer folder: ``{"labels", "consensus", "agreement",
    "class_ids", "class_colors", "manifest"}``."""
    d = Path(out_dir)
    if not (d / TRANSFER_MANIFEST).is_file():
        raise PixelNNError(f"{d} is not a label transfer (no {TRANSFER_MANIFEST})")
    import zipfile

    from pixelnn.io import read_json

    manifest = read_json(d / TRANSFER_MANIFEST, "label-transfer manifest", expect=dict)
    try:
        with np.load(d / "labels.npz", allow_pickle=False) as z:
            out: dict[str, Any] = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise PixelNNError(f"{d / 'labels.npz'}: missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise PixelNNError(f"cannot read {d / 'labels.npz'}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                           f"(truncated or damaged?)") from None
    out["manifest"] = manifest
    return out
