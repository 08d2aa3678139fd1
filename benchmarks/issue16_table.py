"""Issue 16's measurement table from `pixelnn evaluate` reports: Top-1 / Rand-1 / Oracle LPIPS, diversity, seam
rate and visibility, FID and edge AP per report, with the issue's targets checked.

Usage::

    python benchmarks/issue16_table.py --task edges-shoes runs/eval16/shoes-edges-*

``--task`` picks the target row (edges-shoes, sr-shoes, sr-faces, edges-faces); each report's label is its folder
name. Prints one markdown row per report, then each target marked met or missed (by how much) for the last
report given (the default), and seam visibility and FID against the first report's (eq. 3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelnn.io import read_json

#: Issue 16's targets: Top-1, Rand-1, Oracle LPIPS (at most), diversity (at least).
TARGETS = {"edges-shoes": (0.17, 0.20, 0.12, 0.15), "sr-shoes": (0.11, 0.13, 0.08, 0.10),
           "sr-faces": (0.12, 0.14, 0.09, 0.10), "edges-faces": (0.25, 0.30, 0.18, 0.15)}


def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dirs", nargs="+")
    ap.add_argument("--task", choices=sorted(TARGETS), required=True)
    args = ap.parse_args()
    rows = []
    for d in args.report_dirs:
        m = read_json(Path(d) / "metrics.json")
        p = m["methods"]["pixelnn"]
        o = m["settings"]["options"]
        rows.append((Path(d).name, m["num_inputs"], o, p))
    print("| report | inputs | mode | input_weight | back-proj. | Top-1 | Rand-1 | Oracle | diversity | seam rate | "
          "seam visibility | FID | edge AP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n, o, p in rows:
        print(f"| {name} | {n} | {o.get('mode')} | {o.get('input_weight')} | {o.get('back_projection')} | "
              f"{fmt(p.get('top1_lpips'))} | {fmt(p.get('rand1_lpips'))} | {fmt(p.get('oracle_lpips'))} | "
              f"{fmt(p.get('diversity_lpips'))} | {fmt(p.get('seam_rate'))} | {fmt(p.get('seam_visibility'))} | "
              f"{fmt(p.get('fid'), 1)} | {fmt(p.get('faithfulness_ap'))} |")
    name, _, _, p = rows[-1]
    t1, r1, orc, div = TARGETS[args.task]
    print(f"\ntargets for {args.task}, report {name}:")
    for label, key, target, upper in (("Top-1", "top1_lpips", t1, True), ("Rand-1", "rand1_lpips", r1, True),
                                      ("Oracle", "oracle_lpips", orc, True), ("diversity", "diversity_lpips", div, False)):
        v = p.get(key)
        if v is None:
            print(f"- {label}: not measured")
            continue
        met = v <= target if upper else v >= target
        print(f"- {label} {'<=' if upper else '>='} {target}: {v:.3f}, {'met' if met else f'missed by {abs(v - target):.3f}'}")
    base = rows[0][3]
    for label, key in (("seam visibility", "seam_visibility"), ("FID", "fid")):
        if base.get(key) is not None and p.get(key) is not None:
            print(f"- {label}: {p[key]:.3f} vs {rows[0][0]}'s {base[key]:.3f} ({p[key] / base[key]:.2f}x)"
                  if base[key] else f"- {label}: {p[key]:.3f} vs {base[key]:.3f}")


if __name__ == "__main__":
    main()
