"""Face normal maps per second (pixelnn.normals) on CelebA photos, at 1 and 2 torch threads.

    python benchmarks/normals_speed.py ../shared/data/celeba-10k.zip --n 200

The photos are fitted like ``pixelnn prepare --task normals`` does (centre square, 96x96), then
:func:`pixelnn.normals.normal_maps` runs on them after one warm-up batch. Also reported: the two
face-mesh passes alone (:func:`pixelnn.normals.face_landmarks`, timed in a second run); the rest is
the mesh, normals and rasterisation (numpy, one thread). Prints one JSON line per thread count.
On a shared machine more threads than free cores make torch much slower, not faster.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
import zipfile

import numpy as np


def celeba_photos(zip_path: str, n: int, size: int = 96) -> np.ndarray:
    from PIL import Image

    from pixelnn.data.images import fit_image

    out = []
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(f for f in z.namelist() if f.endswith(".jpg"))[:n]
        for name in names:
            im = Image.open(io.BytesIO(z.read(name))).convert("RGB")
            out.append(fit_image(im, size, "crop", max_upscale=1.1))
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("celeba_zip")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from pixelnn import normals

    photos = celeba_photos(args.celeba_zip, args.n)
    normals.normal_maps(photos[:8])  # warm-up: weights, mesh topology
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        c0 = time.process_time()
        res = normals.normal_maps(photos, batch_size=args.batch_size)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1 = time.perf_counter()
        normals.face_landmarks(photos, batch_size=args.batch_size)
        mesh_wall = time.perf_counter() - t1
        print(json.dumps({"threads": threads, "faces": len(photos), "found": int(res.found.sum()),
                          "maps_per_s": round(len(photos) / wall, 2), "wall_s": round(wall, 2),
                          "cpu_s": round(cpu, 2), "face_mesh_s": round(mesh_wall, 2),
                          "mask_fraction": round(float(res.masks[res.found].mean()), 3)}))


if __name__ == "__main__":
    main()
