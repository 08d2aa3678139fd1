"""Regenerate ``stage2_fixture.json``: digests of stage 2's outputs and correspondences on a tiny library.

The digests were made with the code *before* stage 2 was split into parts (issue 11), so
``tests/test_stage2_fixture.py`` proves the restructured pipeline bit-identical to it. Re-run only when an
issue asks for different outputs, and say so in the commit::

    python tests/data/make_stage2_fixture.py
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

#: (name, call keyword arguments) of every recorded run; ``x`` is val input 0 of the tiny dataset.
CASES = [(f"{mode}-{color}", {"mode": mode, "color": color})
         for mode in ("matched", "coherent", "global", "authors") for color in ("rgb", "luma")]
CASES.append(("custom", {"mode": "matched", "color": "rgb", "windows": [1, 5, None], "sets": [[0], [0, 1], [2, 3, 4]],
                         "vote_size": 3, "highpass_sigma": 1.5, "chroma_weight": 0.5, "top_k": 6}))
CASES.append(("coherent-patch5", {"mode": "coherent", "color": "rgb", "patch_size": 5, "vote_size": 1}))
ARRAYS = ("outputs", "exemplar", "source_y", "source_x", "similarity")


def digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()[:32]


def build(root: Path):
    """The tiny model, dataset and library (32x32 superres, 26 exemplars); returns (model_dir, input)."""
    from pixelnn.data.dataset import Dataset
    from pixelnn.library import ExemplarLibrary
    from tests.conftest import make_dataset, make_tiny_model_dir

    model = make_tiny_model_dir(root / "model")
    data = make_dataset(root / "data", n=30, seed=0)
    ExemplarLibrary.build(None, model, [data], progress=False)
    return model, np.asarray(Dataset(data).split("val").inputs[0])


def record(result) -> dict:
    return {**{name: digest(getattr(result, name)) for name in ARRAYS},
            "neighbours": [int(i) for i in result.neighbours],
            "per_output": [digest(o) for o in result.outputs]}


def main() -> None:
    from pixelnn.matching import default_output_specs
    from pixelnn.pipeline import PixelNNPipeline

    torch.set_num_threads(1)
    out = {"about": "sha256[:32] of dtype+shape+bytes of each SynthesisResult array; see make_stage2_fixture.py",
           "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model, x = build(Path(tmp))
        pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
        for name, kw in CASES:
            kw = dict(kw)
            if "windows" in kw:  # the pre-issue-11 API: output specs, not options
                kw["specs"] = default_output_specs([tuple(s) for s in kw.pop("sets")], kw.pop("windows"))
            out["cases"][name] = record(pipe(x, **kw))
            print(name, out["cases"][name]["outputs"])
    (HERE / "stage2_fixture.json").write_text(json.dumps({**out, "cases_kwargs": dict(CASES)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
