"""Composition modes as units: each holds its matcher, its composer, the correspondences it records and
its defaults, in one registry.

======== ==========================================================================================
mode     what it does
======== ==========================================================================================
matched  paper eq. 3: every pixel copies the residual of its best match inside the window
coherent eq. 3 with coherent matches: regions copy whole pieces of one exemplar (few seams; default)
global   paper eq. 2: the residual of whole exemplars at the same position, averaged over the set
authors  the authors' released code: co-located residuals weighted by the window similarity
======== ==========================================================================================

Adding a mode is one class and one registration; the CLI, the web app and ``evaluate`` read their
choices from :func:`mode_names`::

    @register_mode
    class MyMode(CompositionMode):
        name = "mine"
        summary = "what it does, in one line"

        def match(self, query, exemplars, height, width, specs, options) -> Matches: ...
        def compose(self, stage1, ex_photos, ex_stage1, matches, specs, options) -> np.ndarray: ...

Shapes: P = H * W pixels, K exemplars (neighbour ranks), O outputs, d descriptor dims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from pixelnn.compose import compose_authors, compose_copied, compose_global
from pixelnn.errors import PixelNNError
from pixelnn.matching import (DEFAULT_PATCH_SIZE, OutputSpec, coherent_matches, match_windows, select_sets,
                              window_similarities)


@dataclass
class Matches:
    """What a mode's matcher found, per output pixel (on the pipeline's device).

    Attributes
    ----------
    rank : Tensor, (O, P) int64
        Neighbour rank (index into the K exemplars) each output pixel copies from.
    pos : Tensor, (O, P) int64
        Flat pixel of that exemplar it copies.
    similarity : Tensor, (O, P) float32
        Descriptor similarity of the match (pixel cosine; coherent mode: the patch similarity).
    windows : tuple of int or None
        The windows matched, in the order of ``best_sim``'s second axis.
    best_sim : Tensor, (K, W, P) float32, optional
        Best similarity of every exemplar inside every window (``matched`` and ``authors``).
    """

    rank: torch.Tensor
    pos: torch.Tensor
    similarity: torch.Tensor
    windows: tuple[int | None, ...]
    best_sim: torch.Tensor | None = None


def spec_windows(specs: Sequence[OutputSpec]) -> tuple[int | None, ...]:
    """The distinct windows of some outputs, in first-seen order."""
    return tuple(dict.fromkeys(s.window for s in specs))




class CompositionMode:
    """Base class of a composition mode; subclasses set ``name``, ``summary`` and override the steps.

    ``defaults`` are the mode's values of the options left None (:meth:`SynthesisOptions.resolved`):
    ``patch_size`` (coherent matching), ``vote_size``, ``highpass_sigma``, ``chroma_weight``
    (composition, see :func:`pixelnn.compose.compose_copied`).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {"patch_size": None, "vote_size": 1, "highpass_sigma": 0.0,
                                          "chroma_weight": 1.0}
    #: The pixel searches the matcher offers (:data:`pixelnn.options.SEARCHES`); the first is the default.
    searches: ClassVar[tuple[str, ...]] = ("exact",)
    #: Per task, values that replace ``defaults`` for that task (the pipeline applies them, knowing its task).
    task_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Whether :meth:`compose` copies the recorded matches (``matched``, ``coherent``): with regions, the
    #: matches of all regions are merged and composed once (and :func:`pixelnn.compose.recompose` rebuilds
    #: them). Other modes compose each region's set on its own and the pixels are merged.
    copies: ClassVar[bool] = True

    def match(self, query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int,
              specs: Sequence[OutputSpec], options: Any) -> Matches:
        """Matches of the query's pixels (P, d) in the exemplars' (K, P, d), for every output."""
        raise NotImplementedError

    def match_pixels(self, query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int,
                     specs: Sequence[OutputSpec], options: Any, pixels: torch.Tensor) -> Matches:
        """Matches of the query pixels ``pixels`` (Q,) only: ``rank``, ``pos``, ``similarity`` (O, Q).

        By default the whole image is matched (:meth:`match`) and the pixels' columns kept; a mode whose
        matcher treats pixels independently overrides it to match only those (``matched``).
        """
        m = self.match(query, exemplars, height, width, specs, options)
        return Matches(m.rank[:, pixels], m.pos[:, pixels], m.similarity[:, pixels], m.windows)

    def match_regions(self, query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int,
                      specs: Sequence[OutputSpec], options: Any, region: torch.Tensor,
                      members: Sequence[torch.Tensor],
                      set_specs: Sequence[Sequence[OutputSpec]] | None = None) -> Matches:
        """Region-level matching: every pixel matched only against its region's exemplar set.

        Parameters
        ----------
        query : Tensor, (P, d)
        exemplars : Tensor, (U, P, d)
            The union of every set's neighbours.
        height, width : int
        specs, options
            As in :meth:`match`; a spec's ranks are ranks *within* each set.
        region : Tensor, (P,) int64
            The set of each pixel (0 = default, r = region r; :func:`pixelnn.regions.region_map`).
        members : sequence of Tensor, (K_s,) int64
            For set s, the indices into ``exemplars`` of its neighbours in rank order.
        set_specs : sequence of list of OutputSpec, optional
            For set s, the outputs with their ranks within that set (:func:`pixelnn.regions.set_ranks`);
            None: ``specs`` for every set.

        Returns
        -------
        Matches
            ``rank`` indexes the union (U); each pixel's rank is a member of its own set.
        """
        o, p, dev = len(specs), height * width, query.device
        rank = torch.zeros(o, p, dtype=torch.int64, device=dev)
        pos = torch.zeros(o, p, dtype=torch.int64, device=dev)
        sim = torch.zeros(o, p, dtype=torch.float32, device=dev)
        windows = spec_windows(specs)
        for s, m in enumerate(members):
            pix = (region == s).nonzero()[:, 0]  # (Q,) this set's pixels
            if len(pix) == 0:
                continue
            m = m.to(dev)
            mine = specs if set_specs is None else set_specs[s]
            part = self.match_pixels(query, exemplars[m], height, width, mine, options, pix)  # (O, Q) each
            rank[:, pix], pos[:, pix], sim[:, pix] = m[part.rank], part.pos, part.similarity.float()
            windows = part.windows
        return Matches(rank, pos, sim, windows)

    def compose(self, stage1: np.ndarray, ex_photos: np.ndarray, ex_stage1: np.ndarray, matches: Matches,
                specs: Sequence[OutputSpec], options: Any) -> np.ndarray:
        """The outputs (O, H, W, 3) uint8 from f(x) (H, W, 3), the neighbours' photos and f(x_k) (K, H, W, 3)."""
        return compose_copied(stage1, ex_photos, ex_stage1, matches.rank.cpu(), matches.pos.cpu(),
                              color=options.color, vote=options.vote_size, highpass_sigma=options.highpass_sigma,
                              chroma_weight=options.chroma_weight, seam_blend=options.seam_blend)

    def recorded(self, matches: Matches, specs: Sequence[OutputSpec]) -> tuple[torch.Tensor, torch.Tensor]:
        """The (rank, pos) correspondences recorded for the outputs, (O, P) each: by default the copied ones,
        so that :func:`pixelnn.compose.recompose` rebuilds the outputs."""
        return matches.rank, matches.pos

    def __repr__(self) -> str:
        return f"<composition mode {self.name!r}: {self.summary}>"


def _pixel_matches(query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int,
                   specs: Sequence[OutputSpec]) -> Matches:
    """Windowed matching of every exemplar, then the best member of every output's set (paper eq. 3)."""
    windows = spec_windows(specs)
    best_sim, best_pos = match_windows(query, exemplars, height, width, windows)
    rank, pos, sim = select_sets(best_sim, best_pos, specs, windows)
    return Matches(rank, pos, sim, windows, best_sim)


def _same_position(rank: torch.Tensor) -> torch.Tensor:
    o, p = rank.shape
    return torch.arange(p, device=rank.device)[None].expand(o, -1)


_REGISTRY: dict[str, CompositionMode] = {}


def register_mode(cls: type[CompositionMode]) -> type[CompositionMode]:
    """Class decorator: add a mode (an instance of ``cls``) to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls()
    return cls


def mode_names() -> tuple[str, ...]:
    """Registered mode names, in registration order (the first is the default)."""
    return tuple(_REGISTRY)


def get_mode(name: str) -> CompositionMode:
    """The registered mode ``name``; a one-line PixelNNError listing the valid ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PixelNNError(f"invalid composition mode {name!r}; valid: {', '.join(_REGISTRY)}") from None


def mode_help() -> str:
    """One line per mode, ``name: summary`` (for help texts)."""
    return "; ".join(f"{m.name}: {m.summary}" for m in _REGISTRY.values())


@register_mode
class MatchedMode(CompositionMode):
    """Paper eq. 3: ``out_i = f_i(x) + (y_k[j] - f_j(x_k))`` with j the best match of pixel i in the window."""

    name = "matched"
    summary = "eq. 3, every pixel its own best match"

    def match(self, query, exemplars, height, width, specs, options):
        return _pixel_matches(query, exemplars, height, width, specs)

    def match_pixels(self, query, exemplars, height, width, specs, options, pixels):
        windows = spec_windows(specs)
        best_sim, best_pos = match_windows(query, exemplars, height, width, windows, pixels=pixels)  # (K, W, Q)
        rank, pos, sim = select_sets(best_sim, best_pos, specs, windows)
        return Matches(rank, pos, sim, windows)


@register_mode
class CoherentMode(CompositionMode):
    """Eq. 3 with coherent matches (:func:`pixelnn.matching.coherent_matches`): patch similarity plus a Potts
    prior over (exemplar, offset) labels, so regions copy whole pieces of one exemplar.

    Defaults chosen with benchmarks/composition_modes.py (docs/results.md): a 3x3 vote blends the
    remaining seams, and 60% of an exemplar's colour cast is copied.
    """

    name = "coherent"
    summary = "eq. 3 with coherent matches (regions copy whole pieces of one exemplar, few seams; default)"
    defaults = {"patch_size": DEFAULT_PATCH_SIZE, "vote_size": 3, "highpass_sigma": 0.0, "chroma_weight": 0.6}
    #: An edge map carries no colour, so 0.6 pulled every output towards f(x)'s one guessed colour: on
    #: edges->shoes (100 val inputs) diversity 0.145, below issue 16's 0.15; 0.8 gave 0.158 with Top-1 / Rand-1
    #: LPIPS inside the issue's targets, 1.0 gave 0.170 but missed them (docs/results.md).
    task_defaults = {"edges": {"chroma_weight": 0.8}}
    #: ``coarse`` first (the default): on 50 val inputs each of edges->shoes and 12x12 shoes it kept 100.0% of
    #: exact search's mean match similarity and Rand-1 / Oracle LPIPS within 0.001, at 2.4x less matching time
    #: (docs/results.md, issue 17); ``exact`` labels every pixel.
    searches = ("coarse", "exact")
    #: ``search="coarse"``: labels on every second pixel in each direction, the whole image's extra offsets
    #: seeded by the whole-image matches of every 8th pixel (exact: every 4th).
    coarse_stride = 2
    coarse_seed_stride = 8

    def match(self, query, exemplars, height, width, specs, options):
        windows = spec_windows(specs)
        outer = max((w for w in windows if w is not None), default=1)
        if outer <= 1:  # nothing to be coherent over: plain pixel matching
            return _pixel_matches(query, exemplars, height, width, specs)
        coarse = {"stride": self.coarse_stride, "seed_stride": self.coarse_seed_stride} \
            if options.search == "coarse" else {}  # exact: coherent_matches' own defaults
        window_sims = window_similarities(query, exemplars, height, width, outer,
                                          stride=coarse.get("stride", 1))  # (K, Q, T*T)
        rank, pos, sim = coherent_matches(query, exemplars, height, width, specs, windows, window_sims,
                                          patch=options.patch_size, **coarse)
        return Matches(rank, pos, sim, windows)


@register_mode
class GlobalMode(CompositionMode):
    """Paper eq. 2: ``out_i = f_i(x) + (y_k[i] - f_i(x_k))``, whole exemplars at the same position, averaged
    over the set. No windowed matching; the recorded correspondence of a pixel is the set's top-ranked
    member at the same position, with the descriptor similarity there."""

    name = "global"
    summary = "eq. 2 (whole exemplars at the same position, averaged over the set)"
    copies = False

    def match(self, query, exemplars, height, width, specs, options):
        p = height * width
        if any(not 0 <= r < exemplars.shape[0] for s in specs for r in s.ranks):
            raise PixelNNError(f"an exemplar set needs more than the {exemplars.shape[0]} neighbours available")
        top = torch.tensor([s.ranks[0] for s in specs], device=query.device)  # (O,)
        rank = top[:, None].expand(len(specs), p)  # (O, P)
        pixel_sim = torch.einsum("pd,kpd->kp", query.float(), exemplars.float())  # (K, P): cos(q_i, e_k[i])
        return Matches(rank, _same_position(rank), pixel_sim[top], spec_windows(specs))

    def compose(self, stage1, ex_photos, ex_stage1, matches, specs, options):
        return compose_global(stage1, ex_photos, ex_stage1, specs, color=options.color,
                              highpass_sigma=options.highpass_sigma, chroma_weight=options.chroma_weight)


@register_mode
class AuthorsMode(CompositionMode):
    """The authors' released code: at the same position i, every member's residual weighted by its best
    similarity inside the window, averaged. Records the member with the best window similarity, at i."""

    name = "authors"
    summary = "the authors' code (co-located residuals weighted by window similarity)"
    copies = False

    def match(self, query, exemplars, height, width, specs, options):
        return _pixel_matches(query, exemplars, height, width, specs)

    def compose(self, stage1, ex_photos, ex_stage1, matches, specs, options):
        return compose_authors(stage1, ex_photos, ex_stage1, specs, matches.best_sim.cpu(), matches.windows,
                               color=options.color, highpass_sigma=options.highpass_sigma,
                               chroma_weight=options.chroma_weight)

    def recorded(self, matches, specs):
        return matches.rank, _same_position(matches.rank)
