"""A prepared dataset made of evenly spaced rows of another (e.g. a 16k mix of the 216k scale dataset).

    python benchmarks/scale_subset.py runs/scale/dataset-216k runs/scale/subset-16k --rows 16384
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pixelnn.data.dataset import Dataset, SplitData, write_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--offset", type=int, default=0, help="start at this row (then every n/rows-th)")
    args = ap.parse_args(argv)
    ds = Dataset(args.source)
    split = ds.split("train")
    n = len(split.photos)
    idx = np.unique((args.offset + np.linspace(0, n - 1, args.rows)).astype(np.int64) % n)
    empty = SplitData(split.photos[:0], split.inputs[:0], [])
    sub = SplitData(np.asarray(split.photos[idx]), np.asarray(split.inputs[idx]), [split.records[i] for i in idx])
    write_dataset(args.out, ds.task, {"train": sub, "val": empty, "test": empty}, source=f"{args.source} rows")
    print(f"{args.out}: {len(idx)} of {n} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
