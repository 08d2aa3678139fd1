"""The ``pixelnn`` command line: a thin shell over the library.

Every subcommand parses its options, calls one library function and prints a short summary.
Options are checked before any work (:data:`NUMERIC_FLAGS`: finite, in range, odd where it matters;
``--out`` a writable folder). User errors (:class:`PixelNNError`) are printed as one line and exit with
status 2; so is any ``OSError``, ``ValueError`` or ``UnicodeError`` that a check missed (``-v`` logs its
traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from pixelnn import __version__
from pixelnn.config import (AUTOCASTS, DIRECTIONS, EDGE_METHODS, LR_SCHEDULES, MAX_BASE_CHANNELS, MAX_BATCH_SIZE,
                            MAX_DEPTH, MAX_HED_SCALE, MAX_LR, MAX_SEED, MAX_SIZE, MAX_THREADS, PERCEPTUAL_LAYERS, TASKS,
                            TaskConfig, TrainConfig, check_number)
from pixelnn.engine import add_engine_options, one_line
from pixelnn.errors import PixelNNError, printable
from pixelnn.options import MAX_TOP_K, NUMBER_BOUNDS, SynthesisOptions

log = logging.getLogger("pixelnn")


_INT, _ABOVE = {"integer": True}, {"above": True}
#: Every numeric flag of every subcommand, by argparse ``dest`` (the flag is ``--`` + dest with dashes), with
#: its bounds (low, high, :func:`pixelnn.config.check_number`'s keywords): :func:`check_numeric_flags` checks
#: each one given right after parsing, before a command reads a file, so ``--hed-scale 0`` or ``--port 99999``
#: fail at once. Bounds that depend on data (a vote wider than the model's outputs, a U-Net deeper than its
#: photos allow) are checked where the data is known, still before the work starts.
NUMERIC_FLAGS: dict[str, tuple[float | None, float | None, dict[str, bool]]] = {
    # prepare
    "size": (16, MAX_SIZE, _INT), "factor": (1, MAX_SIZE, _INT), "hed_scale": (0, MAX_HED_SCALE, _ABOVE),
    "val_fraction": (0, 1, {}), "test_fraction": (0, 1, {}), "limit": (1, None, _INT),
    # train, baseline-train, demo (and the torch threads of several commands)
    "steps": (0, None, _INT), "minutes": (0, None, _ABOVE), "batch_size": (1, MAX_BATCH_SIZE, _INT),
    "lr": (0, MAX_LR, _ABOVE), "seed": (0, MAX_SEED, _INT), "threads": (1, MAX_THREADS, _INT),
    "val_every": (1, None, _INT), "sample_every": (0, None, _INT), "base_channels": (1, MAX_BASE_CHANNELS, _INT),
    "depth": (0, MAX_DEPTH, _INT), "perceptual_weight": (0, None, {}),
    # index, library
    "pca_dims": (0, None, _INT), "global_dims": (0, None, _INT), "block_size": (1, None, _INT),
    # engine
    "num_workers": (1, None, _INT), "cpus_per_worker": (0, None, _ABOVE), "gpus_per_worker": (0, None, {}),
    "retries": (0, None, _INT),
    # synthesis options (synthesize, evaluate)
    "top_k": (1, MAX_TOP_K, _INT), **NUMBER_BOUNDS,
    # labels, transfer
    "threshold": (0, 255, _INT), "alpha": (0, 1, {}),
    # evaluate
    "num_inputs": (1, None, _INT), "fid_outputs_per_input": (1, None, _INT), "fid_real_photos": (2, None, _INT),
    "faithfulness_outputs_per_input": (1, None, _INT), "num_examples": (0, None, _INT),
    "normals_outputs_per_input": (1, None, _INT),
    # serve
    "port": (1, 65535, _INT), "max_upload_mb": (0, None, _ABOVE), "max_upload_mp": (0, None, _ABOVE),
    "workers": (1, 64, _INT), "batch": (1, 64, _INT), "max_queue": (1, 100_000, _INT),
}


def flag_name(dest: str) -> str:
    """The flag of an argparse ``dest``: ``vote_size`` -> ``--vote-size``."""
    return "--" + dest.replace("_", "-")


def check_numeric_flags(args: argparse.Namespace) -> None:
    """A one-line PixelNNError for the first numeric flag given out of its :data:`NUMERIC_FLAGS` bounds, e.g.
    ``--vote-size must be an odd integer >= 1, got 4`` (a NaN or an infinity never passes)."""
    for dest, (lo, hi, kinds) in NUMERIC_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            check_number(flag_name(dest), value, lo, hi, **kinds)


#: The arguments that name files or folders (argparse ``dest``), checked by :func:`check_path_args`.
PATH_DESTS = ("source", "out", "data_dir", "model", "init_from", "add", "library", "new", "inputs", "options", "like",
              "labels", "results", "data", "pix2pix", "report_dirs", "cache_target")
#: Longest file name (one path component) and path, in bytes, that the file systems PixelNN runs on take.
NAME_MAX, PATH_MAX = 255, 4096


def check_path_args(args: argparse.Namespace) -> None:
    """A one-line PixelNNError for a path argument that no file system takes, before any file is touched: a name
    (one component) over :data:`NAME_MAX` bytes or a path over :data:`PATH_MAX` (the OS would raise
    ENAMETOOLONG from every check of it), or a NUL character (Python raises ValueError). Store URLs are skipped."""
    for dest in PATH_DESTS:
        values = getattr(args, dest, None)
        for v in [values] if isinstance(values, str) else values if isinstance(values, list) else []:
            if not isinstance(v, str) or "://" in v:
                continue
            shown = printable(v if len(v) <= 60 else v[:50] + "...")
            if not v.strip():  # Path("") is the current folder: an unset shell variable, most likely
                raise PixelNNError(f"an empty path {v!r} was given (for {dest.replace('_', ' ')})")
            if "\0" in v:
                raise PixelNNError(f"{shown}: a path cannot hold a NUL character")
            try:
                b = os.fsencode(v)
            except UnicodeError:  # not a file system name at all: the OS call will say so
                continue
            longest = max(len(part) for part in b.split(b"/"))
            if longest > NAME_MAX or len(b) > PATH_MAX:
                raise PixelNNError(f"{shown}: file name too long ({longest} bytes in one name, {len(b)} in all; at "
                                   f"most {NAME_MAX} and {PATH_MAX})")


def check_out_folder(out: str | None, replaces: bool = False, name: str = "--out") -> None:
    """``--out`` must be a folder that is there or can be made: a one-line PixelNNError when it is empty (an unset
    shell variable: ``--out "$DIR"``), when it (or the nearest existing folder above it) is a file or cannot be
    written in, and, when the command ``replaces`` the folder (``--overwrite``), when it is the current folder
    or one above it (replacing it would delete everything in it). Store URLs (``s3://...``) are left to the
    store."""
    if out is None or "://" in str(out):
        return
    if not str(out).strip():
        raise PixelNNError(f"{name} is empty: give a folder")
    path = Path(out)
    if replaces:
        try:
            here, target = Path.cwd().resolve(), path.resolve()
        except (OSError, RuntimeError):
            here = target = None
        if target is not None and (target == here or target in here.parents):
            raise PixelNNError(f"{name} {printable(out)} is the current folder or one above it: --overwrite would "
                               f"replace it and everything in it; give a new folder")
    if path.exists() and not path.is_dir():
        raise PixelNNError(f"--out {out} is a file, not a folder")
    there = next((p for p in (path, *path.parents) if p.exists()), Path("."))  # the nearest existing one
    if not there.is_dir():
        raise PixelNNError(f"--out {out}: {there} is a file, not a folder")
    if not os.access(there, os.W_OK | os.X_OK):
        raise PixelNNError(f"--out {out}: cannot write in {there} (permission denied)")


def check_against_model(options: SynthesisOptions, model_dir: str | Path) -> None:
    """Synthesis options the model's outputs cannot take (``--vote-size 1001`` on 96 x 96 photos), refused before
    the model loads; a model folder whose config cannot be read is left to the loader's own message."""
    from pixelnn.io import read_json

    try:
        size = int(read_json(Path(model_dir) / "config.json")["task"]["size"])
    except Exception:  # not a model folder: the pipeline says so
        return
    options.check_size(size, name=flag_name)


class _ModeChoices(Sequence[str]):
    """The registered composition modes (:func:`pixelnn.modes.mode_names`) as argparse choices, read when
    first used: importing :mod:`pixelnn.modes` (torch) when the parser is built would slow every command
    by ~2 s."""

    def _values(self) -> Sequence[str]:
        from pixelnn.modes import mode_names

        return mode_names()

    def __getitem__(self, i):  # type: ignore[override]
        return self._values()[i]

    def __len__(self) -> int:
        return len(self._values())


#: ``--name`` of every synthesis option flag -> the SynthesisOptions field it sets.
SYNTHESIS_FLAGS = ("top_k", "windows", "sets", "mode", "color", "patch_size", "vote_size", "highpass_sigma",
                   "chroma_weight", "descriptor", "pca_dims", "num_outputs", "seed", "where", "exemplars", "like",
                   "regions", "region_blend", "seam_blend", "back_projection", "input_weight", "rerank_k",
                   "diversity_weight", "search", "order", "autocast")


class _FlagGroup:
    """An argument group that skips the flags of the fields in ``exclude`` (``--num-outputs`` for ``num_outputs``)."""

    def __init__(self, group, exclude: Sequence[str]):
        self.group, self.exclude = group, set(exclude)

    def add_argument(self, flag: str, **kwargs) -> None:
        if kwargs.get("dest", flag.lstrip("-").replace("-", "_")) not in self.exclude:
            self.group.add_argument(flag, **kwargs)


def add_synthesis_options(p: argparse.ArgumentParser, exclude: Sequence[str] = ()) -> None:
    """The flags of :class:`pixelnn.options.SynthesisOptions` (``synthesize``, ``evaluate``), all defaulting to
    "not given": ``--options FILE`` supplies the base and the flags given override it.

    ``exclude`` names fields (e.g. ``("seed", "num_outputs")``) whose flags the command defines itself, with its
    own meaning: :func:`synthesis_options` then leaves them to the caller (``synthesis_options(args, exclude)``).
    """
    from pixelnn.options import COLORS, DESCRIPTORS, ORDERS, SEARCHES

    g = _FlagGroup(p.add_argument_group("synthesis options (pixelnn.options.SynthesisOptions; --options FILE "
                                        "first, then these flags)"), exclude)
    g.add_argument("--options", default=None, metavar="FILE",
                   help="synthesis options as JSON: a synthesize manifest.json (reproduces its outputs) or a file "
                        "written by SynthesisOptions.to_json()")
    g.add_argument("--mode", choices=_ModeChoices(), default=None, metavar="MODE",
                   help="composition mode, one of %(choices)s: coherent (default): eq. 3 with coherent matches "
                        "(regions copy whole pieces of one exemplar, few seams); matched: eq. 3, every pixel its own "
                        "best match; global: eq. 2; "
                        "authors: co-located, similarity-weighted")
    g.add_argument("--color", choices=COLORS, default=None,
                   help="copy residuals in RGB or luminance only (default rgb)")
    g.add_argument("--patch-size", type=int, default=None,
                   help="coherent mode: side of the patch similarity (odd; default 11)")
    g.add_argument("--vote-size", type=int, default=None,
                   help="average each pixel's residual over the matches of its N x N neighbours (odd; default: "
                        "the mode's, 1 for matched, 3 for coherent)")
    g.add_argument("--highpass-sigma", type=float, default=None,
                   help="copy only the residual minus its Gaussian blur of this std in pixels (default 0: all of it)")
    g.add_argument("--seam-blend", type=float, default=None, metavar="PX",
                   help="matched/coherent: gradient-domain fusion of the copied pieces at every seam over about PX "
                        "pixels (every pixel keeps its source); 0 = none (default)")
    g.add_argument("--back-projection", action=argparse.BooleanOptionalAction, default=None,
                   help="superres: make every output's area downsampling equal the input thumbnail exactly "
                        "(default on for superres; other tasks have no thumbnail)")
    g.add_argument("--input-weight", type=float, default=None, metavar="W",
                   help="input-aware retrieval: rank the global neighbours by (1 - W) x the f(x) similarity + W x "
                        "the similarity of the input to the exemplars' inputs, 0-1 (default: the task's, 0.6 for edges, 0 "
                        "otherwise; 0 = f(x) alone, the paper)")
    g.add_argument("--rerank-k", type=int, default=None, metavar="M",
                   help="with --input-weight or --diversity-weight: the M nearest by f(x) to re-rank or pick from "
                        "(default max(4 x top-k, 64))")
    g.add_argument("--diversity-weight", type=float, default=None, metavar="D",
                   help="diverse neighbours: pick the top-k among the candidates by relevance x (1 - D) minus D x their "
                        "global-descriptor similarity to those already picked, 0-1 (default: the task's; 0 = the nearest, the paper)")
    g.add_argument("--chroma-weight", type=float, default=None,
                   help="fraction of the exemplar's colour cast copied, 0-1 (default: the mode's, 1 for matched, 0.6 for "
                        "coherent, 0.8 for coherent on edges, whose sketch has no colour)")
    g.add_argument("--search", choices=SEARCHES, default=None,
                   help="pixel search: exact (every pixel labelled) or coarse (coherent mode, approximate: labels "
                        "found on a half-resolution grid, 2.4x faster matching at the same LPIPS); default: the mode's, "
                        "coarse for coherent, exact for the others")
    g.add_argument("--autocast", choices=AUTOCASTS, default=None,
                   help="precision of the pixel descriptors' VGG pass: bf16 (about 1.8x faster where the CPU/GPU computes "
                        "bfloat16 natively, the same LPIPS), off (float32), or auto (default: bf16 exactly where native)")
    g.add_argument("--order", choices=ORDERS, default=None,
                   help="output order: score: best first, by faithfulness to the input re-derived from each output "
                        "(superres PSNR, edge AP, normal angle; default); grid: the authors' sets x windows, no scores")
    g.add_argument("--descriptor", choices=DESCRIPTORS, default=None,
                   help="pixel descriptor: VGG-16 hypercolumns (default) or the stage-1 network's features")
    g.add_argument("--pca-dims", type=int, default=None, help="reduce descriptors by PCA (default 64; 0: full)")
    g.add_argument("--top-k", type=int, default=None, help="global neighbours K (default 11, what the sets need)")
    g.add_argument("--windows", default=None, help="comma list of window sides or 'whole' (default 1,7,11,whole)")
    g.add_argument("--sets", default=None,
                   help="comma list of exemplar sets of 1-based neighbour ranks: 4 is rank 4, 1-3 ranks 1 to 3, "
                        "1+4 ranks 1 and 4; e.g. 1,2,1-3,1-5 (default: the authors' 18 sets)")
    g.add_argument("--num-outputs", type=int, default=None, help="keep a random subset of the outputs (with --seed)")
    g.add_argument("--seed", type=int, default=None, help="seed of that subset (default 0)")
    g.add_argument("--where", action="append", metavar="KEY=VALUE", help="only exemplars with this label (repeatable)")
    g.add_argument("--like", nargs="+", metavar="PHOTO", help="only exemplars that look like these photos")
    g.add_argument("--exemplars", action="append", metavar="ID,...", help="only these exemplar ids")
    g.add_argument("--region", dest="regions", action="append", metavar="MASK.png:FILTER",
                   help="match the pixels of a mask (a PNG of the output size, nonzero = inside) only against "
                        "this exemplar set: MASK.png:KEY=VALUE (a label), MASK.png:like=PHOTO[,PHOTO] or "
                        "MASK.png:exemplars=ID[,ID]; repeatable, a later region wins where masks overlap; pixels "
                        "outside every region use the other filters' set")
    g.add_argument("--region-blend", type=float, default=None, metavar="PX",
                   help="with --region: spread the colour step where two exemplar sets meet over about PX pixels on "
                        "either side (Poisson blending; every pixel keeps its source); 0 = none (default 4)")


def synthesis_options(args: argparse.Namespace, exclude: Sequence[str] = ()):
    """The :class:`~pixelnn.options.SynthesisOptions` of parsed flags: ``--options FILE`` (or the defaults),
    overridden by the flags given (except those named in ``exclude``, as in :func:`add_synthesis_options`)."""
    from pixelnn.options import SynthesisOptions, parse_sets, parse_windows

    base = SynthesisOptions.load(args.options) if getattr(args, "options", None) else SynthesisOptions()
    given: dict = {}
    for name in SYNTHESIS_FLAGS:
        v = None if name in exclude else getattr(args, name, None)
        if v is None:
            continue
        if name == "windows":
            v = parse_windows(v)
        elif name == "sets":
            v = parse_sets(v)
        elif name == "where":
            v = _parse_where(v)
        elif name == "exemplars":
            v = [e for item in v for e in item.split(",") if e]
        elif name == "regions":
            from pixelnn.regions import parse_region

            v = [parse_region(item) for item in v]
        given[name] = v
    return base.replace(**given)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device`` (the spellings of :data:`pixelnn.devices.DEVICE_CHOICES`, not imported: it loads torch)."""
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="where models and matching run: auto | cpu | cuda | cuda:N | mps (default auto: CUDA "
                        "when there, else CPU)")


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, required=True,
                   help="superres: 12x12 thumbnail -> photo; edges: edge map -> photo; normals: face normal map -> "
                        "photo (aligned face crops, e.g. CelebA); paired: inputs given (pix2pix A|B)")
    p.add_argument("--size", type=int, default=96, help="side of the square output photos (default 96)")
    p.add_argument("--factor", type=int, default=8, help="superres downsampling factor (default 8: 96 -> 12)")
    p.add_argument("--edge-method", choices=EDGE_METHODS, default="hed", help="edge detector for --task edges")
    p.add_argument("--hed-scale", type=float, default=2.0,
                   help="run HED on the photo enlarged this much, above 0 and at most 8 (default 2: sharper; "
                        "1 is ~3.5x faster)")
    p.add_argument("--hed-autocast", choices=AUTOCASTS, default="auto",
                   help="HED's network in bfloat16 (bf16: 2x faster where it is native, 0.4%% of edge pixels more than a "
                        "pixel from float32's at scale 2), float32 (off), or auto (default: bf16 exactly where the CPU/GPU computes it natively); "
                        "recorded in the dataset and used wherever its models run HED")
    p.add_argument("--direction", choices=DIRECTIONS, default="AtoB",
                   help="paired images: AtoB = left half is the input; BtoA = right half is the input")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """The dataset, output folder, budgets and device shared by ``train`` and ``baseline-train``."""
    from pixelnn.devices import DEFAULT_DEVICE, DEVICE_CHOICES  # no torch import: the parser stays fast

    p.add_argument("data_dir", help="folder written by `pixelnn prepare`")
    p.add_argument("--out", required=True, help="model folder (resumes if it holds a checkpoint)")
    p.add_argument("--minutes", type=float, default=None, help="time budget, counted across resumes (see --clock)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what --minutes counts: wall-clock time (default) or this process's CPU time, "
                        "fair on a shared machine (with --threads 1 the two agree on an idle one)")
    p.add_argument("--steps", type=int, default=100_000,
                   help="maximum optimisation steps, counted across resumes (default 100000; 0 saves the starting "
                        "weights as they are)")
    p.add_argument("--device", default=DEFAULT_DEVICE, metavar="DEVICE",
                   help=f"where to train: {', '.join(DEVICE_CHOICES)} (default {DEFAULT_DEVICE}: the first CUDA GPU, "
                        f"else MPS, else the CPU); checkpoints are the same files whatever the device")


def cmd_prepare(args: argparse.Namespace) -> int:
    from pixelnn.data.prepare import prepare_dataset

    task = TaskConfig(name=args.task, size=args.size, factor=args.factor, edge_method=args.edge_method,
                      hed_scale=args.hed_scale, hed_autocast=args.hed_autocast, direction=args.direction)
    report = prepare_dataset(args.source, args.out, task, fit=args.fit, val_fraction=args.val_fraction,
                             test_fraction=args.test_fraction, limit=args.limit, overwrite=args.overwrite,
                             progress=not args.quiet, threads=args.threads, sample=args.sample, seed=args.seed)
    print(report.summary())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pixelnn.training import train

    config = TrainConfig(batch_size=args.batch_size, lr=args.lr, max_steps=args.steps, minutes=args.minutes,
                         clock=args.clock, val_every=args.val_every, sample_every=args.sample_every, seed=args.seed,
                         num_threads=args.threads, perceptual_weight=args.perceptual_weight,
                         perceptual_layers=args.perceptual_layers, init_from=args.init_from, device=args.device,
                         **{k: v for k, v in {"channels_last": args.channels_last, "autocast": args.autocast,
                                              "compile": args.compile, "lr_schedule": args.lr_schedule}.items()
                            if v is not None})  # None: TrainConfig's default
    overrides = {k: v for k, v in {"base_channels": args.base_channels, "depth": args.depth,
                                   "norm": args.norm}.items() if v is not None}
    result = train(args.data_dir, args.out, config, model_overrides=overrides, resume=not args.restart,
                   progress=not args.quiet)
    m = result.metrics
    line = (f"trained {result.steps} steps in {result.seconds / 60:.1f} min ({result.images_per_second:.1f} img/s); "
            f"val PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")
    if "bicubic_psnr" in m:
        line += f" (bicubic: {m['bicubic_psnr']:.2f} dB, {m['bicubic_ssim']:.4f})"
    print(line)
    print(f"model: {result.model_dir}")
    return 0


def cmd_baseline_train(args: argparse.Namespace) -> int:
    from pixelnn.baselines.pix2pix import Pix2PixConfig, train_pix2pix

    config = Pix2PixConfig(batch_size=args.batch_size, max_steps=args.steps, minutes=args.minutes, seed=args.seed,
                           num_threads=args.threads, clock=args.clock, device=args.device)
    result = train_pix2pix(args.data_dir, args.out, config, resume=not args.restart, progress=not args.quiet)
    m = result.metrics
    print(f"pix2pix: trained {result.steps} steps in {result.seconds / 60:.1f} min ({result.images_per_second:.1f} img/s); "
          f"val (one dropout sample per image) L1 {m['l1']:.4f}, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}; "
          f"sample spread (pairwise L1) {m['pairwise_l1']:.4f}")
    print(f"model: {result.model_dir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pixelnn.demo import next_commands, run_demo

    r = run_demo(args.out, data=args.data, minutes=args.minutes, progress=not args.quiet)
    steps = ", ".join(f"{name} {_duration(s)}" for name, s in r.steps.items())
    print(f"demo finished in {_duration(r.seconds)} ({steps})")
    print(f"stage 1 on the 3 test inputs shown: {r.stage1_psnr:.2f} dB PSNR, bicubic {r.bicubic_psnr:.2f} dB "
          f"({r.train_steps} training steps)")
    print(f"demo page: {r.page}")
    print("\nNext, on your own photos:")
    for what, cmd in next_commands(args.out):
        print(f"  # {what}\n  {cmd}")
    return 0


def _duration(seconds: float) -> str:
    """``41 s`` or ``3 min 12 s``."""
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def cmd_index(args: argparse.Namespace) -> int:
    from pixelnn.indexing import index_command

    print(index_command(args.data_dir, args.model, out=args.out, add=args.add, remove=args.remove,
                        progress=not args.quiet, device=args.device, overwrite=args.overwrite,
                        global_dims=args.global_dims, block_size=args.block_size, **engine_kwargs(args)))
    if args.pixel_cache:
        from pixelnn.pipeline import PixelNNPipeline

        pipe = PixelNNPipeline.from_model_dir(args.model, library_dir=args.out, descriptor=args.descriptor,
                                              pca_dims=args.pca_dims or None, device=args.device)
        added = pipe.fill_pixel_cache(progress=not args.quiet)
        from pixelnn.caches import format_size, tree_size

        print(f"pixel cache: described {added} exemplars ({pipe.descriptor.name}) -> {pipe.pixel_cache.dir}, "
              f"now {format_size(tree_size(pipe.pixel_cache.dir)[0])}")
    return 0


def _parse_where(items: list[str] | None) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise PixelNNError(f"--where expects KEY=VALUE, got {item!r}")
        where.setdefault(key, []).append(value)
    return where


def _library_dir(library: str | None) -> str | Path | None:
    """``--library``: another model's folder (its library/ inside), a library folder itself, or a store URL."""
    if not library:
        return None
    if "://" in library:
        return library
    return Path(library) / "library" if (Path(library) / "library").is_dir() else Path(library)


def engine_kwargs(args: argparse.Namespace) -> dict:
    """``--engine`` and its options as keyword arguments (only what was given; local needs none)."""
    engine = getattr(args, "engine", "local") or "local"
    if engine == "local":
        return {}
    out = {"engine": engine}
    for name in ("address", "num_workers", "cpus_per_worker", "gpus_per_worker", "retries"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return out


def cmd_library(args: argparse.Namespace) -> int:
    from pixelnn import zarr_store
    from pixelnn.zarr_store import open_library

    if args.action == "upgrade":
        if not args.new:
            raise PixelNNError("library upgrade needs OLD and NEW: `pixelnn library upgrade OLD_DIR NEW_URL`")
        lib = zarr_store.upgrade_library(args.library, args.new, global_dims=args.global_dims or 0,
                                         overwrite=args.overwrite, progress=not args.quiet)
        print(f"upgraded {args.library} -> {lib.url}")
        print(lib.summary())
        return 0
    if args.new:
        raise PixelNNError(f"library {args.action} takes one library, got a second: {args.new!r}")
    lib = open_library(args.library)
    if args.action == "info":
        print(lib.summary())
        if isinstance(lib, zarr_store.ZarrLibrary):
            print(f"versions: {', '.join(map(str, lib.versions()))}; store format {lib.info['version']}")
        return 0
    if args.action == "compact":
        print(f"compacted: {lib.compact()} removed rows dropped")
        print(lib.summary())
        return 0
    if not isinstance(lib, zarr_store.ZarrLibrary):
        raise PixelNNError(f"{args.library} is a version-1 library: nothing to verify (convert it with "
                           f"`pixelnn library upgrade`)")
    problems = lib.verify(progress=not args.quiet)
    for p in problems:
        print(f"pixelnn library verify: {p}", file=sys.stderr)
    print(f"{lib.url}: version {lib.version}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 2 if problems else 0


def cmd_cache(args: argparse.Namespace) -> int:
    from pixelnn import caches

    if args.action == "info":
        if args.shared:
            raise PixelNNError("--shared goes with clear (info always lists the shared caches)")
        for line in caches.info(args.cache_target):
            print(line)
        return 0
    print(caches.clear(args.cache_target, shared=args.shared))
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from pixelnn.engine import engine_options
    from pixelnn.synthesize import synthesize_files

    options = synthesis_options(args)
    check_against_model(options, args.model)
    done = synthesize_files(args.inputs, args.model, args.out, options, library_dir=_library_dir(args.library),
                            from_photo=args.from_photo, fit=args.fit, batch_size=args.batch_size,
                            overwrite=args.overwrite, pixel_cache=not args.no_pixel_cache, device=args.device,
                            progress=not args.quiet, correspondence_maps=args.correspondence_maps,
                            **engine_options(args))
    for path, why in done.failed:  # one line each; the others were synthesized
        print(f"pixelnn synthesize: error: {printable(why)}", file=sys.stderr)
    if done.done or done.skipped or not done.failed:
        print(done.summary())
    return 2 if done.failed else 0


#: Synthesis options whose flags ``pixelnn evaluate`` defines itself: outputs per input of every method, the seed.
EVALUATE_OWN_FLAGS = ("seed", "num_outputs")
#: ... and those it takes no flag for: ``order`` (evaluate always scores the outputs for its Top-1 row and
#: measures everything else in grid order, as before).
EVALUATE_EXCLUDED = (*EVALUATE_OWN_FLAGS, "order")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pixelnn.evaluate import EvalSettings, evaluate

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    library_dir = _library_dir(args.library)  # as in synthesize: another model's folder or a library folder
    settings = EvalSettings(split=args.split, num_inputs=args.num_inputs, num_outputs=args.num_outputs, seed=args.seed,
                            fid_outputs_per_input=args.fid_outputs_per_input, fid_real_photos=args.fid_real_photos,
                            faithfulness_outputs_per_input=args.faithfulness_outputs_per_input,
                            num_examples=args.num_examples, normals_metrics=args.normals_metrics,
                            normals_outputs_per_input=args.normals_outputs_per_input,
                            options=synthesis_options(args, exclude=EVALUATE_EXCLUDED))
    check_against_model(settings.options, args.model)
    m = evaluate(args.model, args.out, settings, data_dir=args.data, pix2pix=args.pix2pix, library_dir=library_dir,
                 overwrite=args.overwrite, progress=not args.quiet, device=args.device)
    for name, s in m["methods"].items():
        fid = "-" if s.get("fid") is None else f"{s['fid']:.1f}"
        div = "-" if s.get("diversity_lpips") is None else f"{s['diversity_lpips']:.3f}"
        seams = "" if s.get("seam_rate") is None else f"; seam rate {s['seam_rate']:.3f}"
        top1 = "" if s.get("top1_lpips") is None else f" Top-1 {s['top1_lpips']:.3f}"
        print(f"{name}: LPIPS Rand-1 {s['rand1_lpips']:.3f}{top1} Oracle {s['oracle_lpips']:.3f}; "
              f"diversity {div}{seams}; FID {fid}; spectral distance {s['spectral_distance_db']:.2f} dB")
        if "normals_inputs" in s:
            ang = "; ".join(f"{kind} " + ("-" if s.get(f'{kind}_normals_mean') is None else
                                          f"{s[f'{kind}_normals_mean']:.1f}/{s[f'{kind}_normals_median']:.1f}/"
                                          f"{s[f'{kind}_normals_rmse']:.1f} deg, {s[f'{kind}_normals_within_22_5']:.1f}% "
                                          f"within 22.5") for kind in ("rand1", "oracle"))
            print(f"{name}: normals mean/median/RMSE {ang}; no face in {s['normals_outputs_no_face']} of "
                  f"{s['normals_outputs_scored']} outputs")
    print(f"evaluated {m['num_inputs']} inputs in {m['wall_seconds'] / 60:.1f} min -> {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pixelnn.report import report_command

    print(f"report: {report_command(args.report_dirs, args.out)}")
    return 0


#: A host name as RFC 1123 spells one (labels of letters, digits and inner dashes, dot-separated).
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                        r"[A-Za-z0-9])?)*\.?")


def check_serve_address(host: str, port: int) -> None:
    """``serve``'s ``--host`` and ``--port``, before the model loads (seconds) rather than at the bind: a host that is
    neither an IP address nor a host name, or (for an IP address or ``localhost``) an address this machine cannot
    listen on or a port in use, is a one-line PixelNNError. Other names are left to the bind (no DNS lookup here)."""
    import ipaddress
    import socket

    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        if not _HOST_NAME.fullmatch(host) or re.fullmatch(r"[0-9.]+", host):  # 999.1.1.1: no address, no name
            raise PixelNNError(f"--host {printable(host)!r} is neither an IP address nor a host name") from None
        if host.lower().rstrip(".") != "localhost":
            return
        family, host = socket.AF_INET, "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PixelNNError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


#: The environment variable ``serve`` reads its login from when ``--auth`` is not given (``USER:PASSWORD``; it
#: keeps the password out of the shell history and of ``ps``).
AUTH_ENV = "PIXELNN_AUTH"


def serve_auth(flag: str | None) -> tuple[str, str] | None:
    """``serve``'s login: ``--auth USER:PASSWORD``, else ``$PIXELNN_AUTH`` (unset or empty: none), as (user,
    password); a malformed value is a one-line PixelNNError that does not repeat the password."""
    from pixelnn.web_limits import parse_auth

    if flag is not None:
        return parse_auth(flag, "--auth")
    env = os.environ.get(AUTH_ENV)
    return parse_auth(env, AUTH_ENV) if env else None


def cmd_serve(args: argparse.Namespace) -> int:
    from pixelnn.web import serve

    auth = serve_auth(args.auth)  # before the model loads, like the address
    check_serve_address(args.host, args.port)

    serve(args.model, host=args.host, port=args.port, library_dir=_library_dir(args.library),
          max_upload_bytes=int(args.max_upload_mb * 2**20), max_upload_pixels=int(args.max_upload_mp * 1e6),
          threads=args.threads, device=args.device, workers=args.workers, batch=args.batch,
          max_queue=args.max_queue, auth=auth)
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from pixelnn.labels import labels_command

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    report = labels_command(args.source, args.library, args.out, threshold=args.threshold, device=args.device,
                            overwrite=args.overwrite, progress=not args.quiet)
    print(report.summary())
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from pixelnn.transfer import transfer_command

    for line in transfer_command(args.results, args.labels, out=args.out, alpha=args.alpha, overwrite=args.overwrite):
        print(line)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, as every other error: ``pixelnn train: error: argument --steps:
    invalid int value: 'x' (pixelnn train --help lists the options)``, exit status 2, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {printable(message)} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pixelnn", description="PixelNN: example-based image synthesis")
    parser.add_argument("--version", action="version", version=f"pixelnn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="turn a folder or zip of photos (or pix2pix pairs) into a dataset")
    p.add_argument("source", help="folder or .zip of photos, or of pix2pix A|B images for --task paired")
    p.add_argument("--out", required=True, help="dataset folder to create")
    _add_task_options(p)
    p.add_argument("--fit", choices=("auto", "pad", "crop"), default="auto",
                   help="pad: whole image on white (products); crop: centre square (faces); auto: decide from borders")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--limit", type=int, default=None,
                   help="use only N usable images, drawn as --sample says (default: all)")
    p.add_argument("--sample", choices=("random", "first"), default="random",
                   help="how --limit draws: random: a seeded sample, stratified by the first label (Category for "
                        "shoes, identity for CelebA; default); first: the first N in sorted path order")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample random (default 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads while the inputs are derived (HED, the face mesh); default 1 for --task "
                        "normals (faster than all cores, measured), torch's choice otherwise")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train the stage-1 regressor (L2, optionally + perceptual loss) on a dataset")
    _add_training_options(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, above 0 and at most 1 (default 0.002)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--val-every", type=int, default=500, help="validate and checkpoint every N steps")
    p.add_argument("--sample-every", type=int, default=1000, help="write a sample grid every N steps (0: never)")
    p.add_argument("--base-channels", type=int, default=None, help="U-Net channels at full resolution (default 16)")
    p.add_argument("--depth", type=int, default=None,
                   help="U-Net downsamplings, at most log2 of the photo side (default 4)")
    p.add_argument("--norm", choices=("batch", "group", "none"), default=None)
    p.add_argument("--perceptual-weight", type=float, default=0.0, metavar="W",
                   help="add W x a VGG-16 perceptual loss (MSE of frozen ImageNet VGG activations) to the L2 loss "
                        "(default 0: pure L2 as in the paper; ~1e-3 weighs the two terms about equally; "
                        "a step costs ~3.5x as much)")
    p.add_argument("--perceptual-layers", default=",".join(PERCEPTUAL_LAYERS), metavar="LAYERS",
                   help="comma list of VGG-16 layers of the perceptual loss (default %(default)s; "
                        "fewer or shallower layers are cheaper)")
    p.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                   help="start from this model's weights and architecture (a model folder or regressor.safetensors) "
                        "with a fresh optimizer and schedule: fine-tuning; ignored when --out holds a checkpoint "
                        "to resume")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="the regressor and its batches in torch.channels_last (speed; default off)")
    p.add_argument("--autocast", choices=AUTOCASTS, default=None,
                   help="bf16: forward pass and loss under torch.autocast in bfloat16, weights and optimizer fp32; "
                        "auto (the default): bf16 where the device computes it natively (AVX512-BF16/AMX CPUs, "
                        "Ampere+ GPUs), off elsewhere")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the regressor for the training steps; where compiling fails, a warning and "
                        "eager training (default off)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="learning rate over the budget used: cosine (warm-up 2%%, cosine to 5%%; the default), "
                        "constant, onecycle (warm-up 30%% from 1/25, cosine to ~0)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("baseline-train", help="train the pix2pix baseline (U-Net + PatchGAN, L1 + cGAN) on a dataset")
    _add_training_options(p)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    p.set_defaults(func=cmd_baseline_train)

    p = sub.add_parser("index", help="build or update the exemplar library of a trained model")
    p.add_argument("data_dir", help="prepared dataset whose train pairs become exemplars")
    p.add_argument("--model", required=True, help="model folder from `pixelnn train`")
    p.add_argument("--out", default=None, help="library folder (default MODEL/library)")
    p.add_argument("--add", nargs="+", default=None, metavar="DATA_DIR", help="add these datasets' train pairs")
    p.add_argument("--remove", nargs="+", default=None, metavar="ID", help="remove these exemplar ids")
    p.add_argument("--pixel-cache", action="store_true",
                   help="also store every exemplar's pixel descriptors (1.2 MB each at 64 dims): faster synthesis")
    p.add_argument("--descriptor", choices=("hypercolumn", "regressor"), default="hypercolumn",
                   help="pixel descriptor to cache (with --pixel-cache)")
    p.add_argument("--pca-dims", type=int, default=64, help="its PCA dims (with --pixel-cache)")
    p.add_argument("--global-dims", type=int, default=None, metavar="D",
                   help="a new store keeps its conv5 descriptors PCA-reduced to D dims, float16 (default 512; "
                        "0 keeps all 6400, float32)")
    p.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="exemplars per segment, the unit of work of a build (default 16384)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing library (once the new one is complete)")
    add_device_option(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("library", help="inspect, verify, compact or upgrade an exemplar library")
    p.add_argument("action", choices=("info", "verify", "compact", "upgrade"),
                   help="info: summary; verify: check every checksum; compact: drop removed rows; "
                        "upgrade: convert a version-1 library into a chunked store")
    p.add_argument("library", metavar="LIB", help="a library folder or store URL")
    p.add_argument("new", nargs="?", default=None, metavar="NEW", help="upgrade: the new store's folder or URL")
    p.add_argument("--global-dims", type=int, default=0, metavar="D",
                   help="upgrade: reduce the conv5 descriptors to D dims (default 0: copy them in full, so "
                        "outputs stay identical)")
    p.add_argument("--overwrite", action="store_true", help="upgrade: replace NEW if it exists")
    p.set_defaults(func=cmd_library)

    p = sub.add_parser("cache", help="list or clear the disk caches PixelNN writes (a library's pixel cache, "
                                     "evaluate's Inception features)")
    p.add_argument("action", choices=("info", "clear"),
                   help="info: every cache with its path and size; clear: remove the library's pixel cache "
                        "(recomputed when needed), with --shared also the shared Inception features")
    p.add_argument("cache_target", nargs="?", default=None, metavar="MODEL_DIR_OR_LIBRARY",
                   help="a model folder (its library/) or a library folder; info without it lists the shared "
                        "caches only")
    p.add_argument("--shared", action="store_true",
                   help="clear: also the Inception features in $PIXELNN_CACHE (default ~/.cache/pixelnn)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("synthesize", help="many outputs with per-pixel correspondences for each input")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="input images (or photos with --from-photo): files, folders of images, globs, or list "
                        "files (.txt: one of those per line)")
    p.add_argument("--model", required=True, help="model folder (with its library)")
    p.add_argument("--out", required=True, help="results folder; one subfolder per input")
    p.add_argument("--from-photo", action="store_true", help="derive each input from a photo with the model's task")
    p.add_argument("--batch-size", type=int, default=8,
                   help="inputs per batch: stage 1, global descriptors and VGG passes run on a batch at once "
                        "(default 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo inputs whose output folder is already complete (default: skip them, so an "
                        "interrupted run resumes)")
    p.add_argument("--no-pixel-cache", action="store_true",
                   help="do not read or store exemplar pixel descriptors in LIB_DIR/pixel_cache")
    p.add_argument("--correspondence-maps", action=argparse.BooleanOptionalAction, default=True,
                   help="write each output's correspondence_NNN.png figure (default); --no-correspondence-maps "
                        "keeps them only in correspondences.npz and writes results in about half the time")
    p.add_argument("--library", default=None, metavar="LIB_DIR", help="borrow another library's exemplars")
    p.add_argument("--fit", choices=("pad", "crop"), default=None,
                   help="how photos are fitted to the square (default: crop for normals models, whose photos are "
                        "aligned face crops; else pad)")
    add_device_option(p)
    add_engine_options(p)
    add_synthesis_options(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("labels", help="label folders for a library's exemplars: foreground masks (white "
                                      "backgrounds) or face masks (face mesh)")
    p.add_argument("source", choices=("foreground", "face"),
                   help="foreground: the object on a white background (border-connected near-white is background, "
                        "holes filled, specks dropped); face: where the face mesh covers the photo (no face: all "
                        "background)")
    p.add_argument("library", metavar="LIBRARY_OR_MODEL_DIR", help="a library folder or store URL, or a model folder "
                                                                   "(its library/)")
    p.add_argument("--out", required=True, metavar="LABEL_DIR",
                   help="label folder to create: one 0/1 <id>.png per exemplar id (slashes as sub-folders) and "
                        "labels.json")
    p.add_argument("--threshold", type=int, default=240,
                   help="foreground: a pixel whose smallest channel is at least this is white (default 240)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the face mesh (default: torch's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing LABEL_DIR (once the new one is complete)")
    p.add_argument("--device", default="cpu", metavar="DEVICE", help="face: where the face-mesh model runs (default cpu)")
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser("transfer", help="transfer exemplar labels to synthesized outputs through their "
                                        "correspondences: per-output label maps, consensus, overlays")
    p.add_argument("results", nargs="+", metavar="RESULT_DIR", help="result folders written by `pixelnn synthesize`")
    p.add_argument("--labels", required=True, metavar="LABEL_DIR",
                   help="one label image per exemplar id, <id>.png (slashes as sub-folders): integer class masks "
                        "(L, I;16, P) or RGB palettes; `pixelnn labels` makes some")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the transfer goes (default RESULT_DIR/labels; with several results, DIR/<result name>)")
    p.add_argument("--alpha", type=float, default=0.5, help="share of the label colour in the overlays (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing transfer folder")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("evaluate", help="fidelity, faithfulness, diversity, FID/KID and spectra on a dataset split")
    p.add_argument("model", metavar="MODEL_DIR", help="model folder (with its library)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for metrics.json, plots and examples")
    p.add_argument("--split", default="test", help="dataset split to evaluate (default test)")
    p.add_argument("--data", default=None, metavar="DATA_DIR", help="dataset (default: the one the model was trained on)")
    p.add_argument("--num-inputs", type=int, default=100, help="inputs evaluated (seeded random subset; default 100)")
    p.add_argument("--num-outputs", type=int, default=72, help="outputs per input for each method (default 72)")
    p.add_argument("--pix2pix", default=None, metavar="P2P_DIR", help="also evaluate this pix2pix baseline")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the input subset and of every draw; PixelNN input i uses seed + i (default 0)")
    p.add_argument("--fid-outputs-per-input", type=int, default=8,
                   help="seeded outputs per input that enter FID/KID (default 8; Inception costs ~0.1-0.5 s/image)")
    p.add_argument("--fid-real-photos", type=int, default=None,
                   help="use a seeded random subset of N photos of the split as the real set (with --seed; "
                        "default all)")
    p.add_argument("--faithfulness-outputs-per-input", type=int, default=8,
                   help="outputs per input whose HED edges are scored against edge inputs (default 8)")
    p.add_argument("--num-examples", type=int, default=6, help="inputs kept as examples for the report, a seeded random subset of those evaluated "
                        "(default 6)")
    p.add_argument("--normals-metrics", choices=("auto", "on", "off"), default="auto",
                   help="the paper's angular errors of face-mesh normals of the outputs vs the photo's (Tables 1-2); "
                        "auto (default): for face datasets (task normals, or edges whose photos show faces)")
    p.add_argument("--normals-outputs-per-input", type=int, default=None, metavar="N",
                   help="estimate the normals of only N seeded outputs per input, Rand-1 among them (default: all, "
                        "the paper's Oracle; ~0.1 s per image)")
    p.add_argument("--library", default=None, metavar="LIB_DIR", help="use another library's exemplars")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing REPORT_DIR")
    add_device_option(p)
    # PixelNN's synthesis options, as in `pixelnn synthesize`; --seed and --num-outputs are evaluate's own (above)
    add_synthesis_options(p, exclude=EVALUATE_EXCLUDED)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="HTML pages (tables, examples, spectra) from evaluation folders")
    p.add_argument("report_dirs", nargs="+", metavar="REPORT_DIR", help="folders written by `pixelnn evaluate`")
    p.add_argument("--out", required=True, metavar="PAGE_DIR", help="folder for index.html and one page per experiment")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="web app: draw or upload an input, browse the outputs, see where pixels came from")
    p.add_argument("--model", required=True, help="model folder (with its library)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; any other, e.g. 0.0.0.0, is reachable "
                        "from the network: without --auth a warning says so)")
    p.add_argument("--port", type=int, default=7860, help="port, 1-65535 (default 7860)")
    p.add_argument("--library", default=None, metavar="LIB_DIR", help="borrow another library's exemplars")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest upload in MB (default 10); an upload request may carry 8 such files, other "
                        "requests at most 2 MB")
    p.add_argument("--max-upload-mp", type=float, default=25.0,
                   help="largest upload, sketch or region canvas in megapixels (default 25)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help=f"require this login for the page and its API (default: none; ${AUTH_ENV}=USER:PASSWORD "
                        f"does the same and keeps the password out of the shell history and ps)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the cores shared out between the workers)")
    p.add_argument("--workers", type=int, default=2,
                   help="syntheses run at the same time, 1-64 (default 2); other users wait in the queue")
    p.add_argument("--batch", type=int, default=1,
                   help="run up to N waiting requests with the same options as one batch, 1-64 (default 1: off; "
                        "pays on a GPU)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait; the next is refused with 'the queue is full' (default 64)")
    add_device_option(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="prepare, train and show results on a small dataset (no data needed)")
    p.add_argument("--data", default=None, help="a dataset zip or folder to use instead of the bundled photos")
    p.add_argument("--out", default="pixelnn-demo", help="output folder (default ./pixelnn-demo)")
    p.add_argument("--minutes", type=float, default=2.0, help="training budget in minutes (default 2)")
    p.set_defaults(func=cmd_demo)
    return parser


def _tolerant_output() -> None:
    """Let stdout and stderr print any path: a file name that is not UTF-8 (held as surrogates) is written
    with backslash escapes instead of failing with UnicodeEncodeError after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError, AttributeError):  # a stream that cannot change: leave it
                pass


def main(argv: list[str] | None = None) -> int:
    _tolerant_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    # other libraries (faiss, ray, gradio, httpx...) speak at WARNING and above only unless -v; pixelnn at the
    # chosen level (pixelnn.logs)
    from pixelnn.logs import configure

    configure(verbose=args.verbose, quiet=args.quiet)
    if not args.command:
        parser.print_help()
        return 2
    try:
        check_numeric_flags(args)
        check_path_args(args)
        # synthesize --overwrite replaces the results inside OUT, the others OUT itself
        check_out_folder(getattr(args, "out", None),
                         replaces=bool(getattr(args, "overwrite", False)) and args.command != "synthesize")
        if args.command == "library" and args.new and "://" not in args.new:  # upgrade's NEW, replaced likewise
            check_out_folder(args.new, replaces=args.overwrite, name="NEW")
        return args.func(args)
    except PixelNNError as e:  # one line, whatever it names (a file name with a newline is written \n)
        print(f"pixelnn {args.command}: error: {printable(e)}", file=sys.stderr)
        return 2
    except (OSError, ValueError, UnicodeError) as e:  # the last line of defence: the checks should come first
        log.debug("unexpected error", exc_info=True)  # -v shows the traceback
        print(f"pixelnn {args.command}: error: {printable(one_line(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pixelnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
