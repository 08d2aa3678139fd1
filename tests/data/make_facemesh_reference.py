"""Make the reference for tests/test_facemesh.py with the REAL TFLite interpreter (LiteRT).

Run it once, in a throwaway environment (never in the project's venv; no TensorFlow needed):

    python3 -m venv /tmp/tfl
    /tmp/tfl/bin/pip install ai-edge-litert numpy pillow          # ai-edge-litert 2.3.0, Python 3.11
    /tmp/tfl/bin/python tests/data/make_facemesh_reference.py \
        --model .venv/lib/python3.11/site-packages/mediapipe/modules/face_landmark/face_landmark.tflite \
        --celeba ../shared/data/celeba-10k.zip

``--model`` is the face-mesh model of the ``mediapipe==0.10.21`` wheel (installed with --no-deps in
the project's venv). It writes ``facemesh_reference.json`` next to itself: numbers only, no images.

Inputs (each (192, 192, 3) float32 in [0, 1], the model's input range):

- ``synthetic``: :func:`synthetic_inputs`, made from a seed and formulas, so the test regenerates them;
- ``celeba``: :func:`celeba_inputs`, the first CelebA aligned crops of ``celeba-10k.zip``, a fixed
  square around the face resampled to 192x192 (the test rebuilds them when the zip is there, and
  skips otherwise). Only the model's outputs and a SHA-1 of each input are stored.

For each input: ``*_landmarks`` (N, 468, 3), ``*_score`` (N,) (the presence logit, before the
sigmoid), once with LiteRT's default CPU kernels (XNNPACK, what MediaPipe runs) and once with its
reference kernels (``*_ref_*``), plus ``*_sha1`` of the float32 input bytes.

This module imports only numpy and PIL at the top, so the test can import the input builders.
"""

from __future__ import annotations

import json
import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "facemesh_reference.json"
SIZE = 192

#: CelebA entries used (the first four of img_align_celeba).
CELEBA_NAMES = tuple(f"img_align_celeba/{i:06d}.jpg" for i in range(1, 5))
#: Square region around the face on an 89x109 aligned crop: centre (x, y) and side, in pixels.
CELEBA_REGION = (44.5, 58.0, 75.0)


def crop_square(image: np.ndarray, cx: float, cy: float, side: float, size: int = SIZE) -> np.ndarray:
    """Bilinear resampling of the axis-aligned square (centre ``cx, cy``, ``side``) to (size, size).

    Continuous pixel coordinates: pixel (i, j) covers [j, j+1) x [i, i+1), its centre is
    (j + 0.5, i + 0.5). Samples outside the image take the nearest border pixel.

    Parameters
    ----------
    image : ndarray, (H, W, 3) uint8
    cx, cy, side : float

    Returns
    -------
    ndarray, (size, size, 3) float32 in [0, 1]
    """
    h, w = image.shape[:2]
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * side - side / 2  # (size,) offsets from the centre
    px = np.clip(cx + t - 0.5, 0, w - 1)  # (size,) column index, real
    py = np.clip(cy + t - 0.5, 0, h - 1)  # (size,) row index, real
    x0 = np.minimum(np.floor(px).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(py).astype(np.int64), h - 2)
    fx = (px - x0)[None, :, None]
    fy = (py - y0)[:, None, None]
    im = image.astype(np.float64) / 255
    top = im[y0][:, x0] * (1 - fx) + im[y0][:, x0 + 1] * fx  # (size, size, 3)
    bottom = im[y0 + 1][:, x0] * (1 - fx) + im[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def synthetic_inputs() -> np.ndarray:
    """Three deterministic model inputs: uint8 noise, a smooth pattern, a face-like drawing.

    Returns
    -------
    ndarray, (3, 192, 192, 3) float32 in [0, 1]
        Exact multiples of 1/255 (built from uint8), so they are the same on every machine.
    """
    noise = np.random.default_rng(13).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) / SIZE
    smooth = np.stack([0.5 + 0.5 * np.sin(7 * xx + 3 * yy), 0.5 + 0.5 * np.cos(5 * yy - 2 * xx),
                       xx * yy], axis=-1)
    smooth = np.rint(smooth * 255).astype(np.uint8)
    # a skin-coloured ellipse with darker eyes and mouth on a grey background
    face = np.full((SIZE, SIZE, 3), 110, np.uint8)
    r = ((xx - 0.5) / 0.33) ** 2 + ((yy - 0.52) / 0.43) ** 2
    face[r < 1] = (205, 160, 130)
    for ex in (0.36, 0.64):
        face[((xx - ex) / 0.07) ** 2 + ((yy - 0.42) / 0.03) ** 2 < 1] = (60, 40, 35)
    face[((xx - 0.5) / 0.12) ** 2 + ((yy - 0.72) / 0.03) ** 2 < 1] = (150, 60, 60)
    return np.stack([noise, smooth, face]).astype(np.float32) / 255


def celeba_inputs(zip_path: str | Path) -> np.ndarray:
    """The first CelebA faces of ``zip_path``, cropped with :data:`CELEBA_REGION`.

    Returns
    -------
    ndarray, (4, 192, 192, 3) float32 in [0, 1]
    """
    from PIL import Image

    out = []
    with zipfile.ZipFile(zip_path) as z:
        for name in CELEBA_NAMES:
            image = np.asarray(Image.open(io.BytesIO(z.read(name))).convert("RGB"))  # (109, 89, 3)
            out.append(crop_square(image, *CELEBA_REGION))
    return np.stack(out)


def sha1(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def run_litert(model: Path, inputs: np.ndarray, reference_kernels: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, 468, 3) landmarks and (N,) presence logits from the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interp = Interpreter(model_path=str(model), experimental_op_resolver_type=kind, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    outs = {d["name"]: d["index"] for d in interp.get_output_details()}
    landmarks, scores = [], []
    for x in inputs:
        interp.set_tensor(inp, x[None])
        interp.invoke()
        landmarks.append(interp.get_tensor(outs["conv2d_21"]).reshape(468, 3))
        scores.append(float(interp.get_tensor(outs["conv2d_31"]).reshape(())))
    return np.stack(landmarks).astype(np.float32), np.asarray(scores, np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path, help="mediapipe/modules/face_landmark/face_landmark.tflite")
    ap.add_argument("--celeba", type=Path, default=None, help="celeba-10k.zip (optional)")
    args = ap.parse_args()
    sets = {"synthetic": synthetic_inputs()}
    if args.celeba is not None:
        sets["celeba"] = celeba_inputs(args.celeba)
    arrays = {}
    for name, x in sets.items():
        for ref in (False, True):
            lm, score = run_litert(args.model, x, ref)
            tag = f"{name}_ref" if ref else name
            arrays[f"{tag}_landmarks"] = lm
            arrays[f"{tag}_score"] = score
        arrays[f"{name}_sha1"] = np.asarray([sha1(a) for a in x])
        d = np.abs(arrays[f"{name}_landmarks"] - arrays[f"{name}_ref_landmarks"]).max()
        print(f"{name}: {len(x)} inputs, logits {arrays[f'{name}_score']}, XNNPACK vs reference kernels "
              f"max |d landmark| {d:.2e} px")
    OUT.write_text(json.dumps({k: {"dtype": str(np.asarray(v).dtype), "shape": list(np.shape(v)), "values": np.asarray(v).ravel().tolist()} for k, v in arrays.items()}))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
