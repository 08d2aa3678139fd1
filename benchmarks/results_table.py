"""Markdown tables of `pixelnn evaluate` results, with the issue's aims checked, for docs/results.md.

Usage::

    python benchmarks/results_table.py runs/eval-shoes-sr runs/eval-shoes-edges ...

Prints, per experiment, one row per method (Rand-1 and Oracle LPIPS/PSNR/SSIM, faithfulness,
diversity, seam rate, FID/KID, spectral distance), then a table of the four aims (PixelNN Oracle
LPIPS below pix2pix's; diversity at least 5x pix2pix's; FID no worse than pix2pix's; spectrum
closer to the photos' than stage 1's), each marked met or missed, from the numbers alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelnn.io import read_json

LABELS = {"pixelnn": "PixelNN", "pix2pix": "pix2pix", "stage1": "stage 1"}


def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dirs", nargs="+")
    args = ap.parse_args()
    aims = []
    print("| experiment | train / test pairs | stage 1: steps, val PSNR / SSIM | pix2pix: steps, val PSNR / SSIM | "
          "budget (CPU min each) |")
    print("|---|---|---|---|---|")
    for d in args.report_dirs:
        m = read_json(Path(d) / "metrics.json")
        ds = read_json(Path(m["data_dir"]) / "dataset.json")["counts"]
        s1 = read_json(Path(m["model_dir"]) / "metrics.json")
        cfg = read_json(Path(m["model_dir"]) / "config.json")
        budget = cfg.get("train", {}).get("minutes")
        p2p = read_json(Path(m["pix2pix_dir"]) / "metrics.json") if m.get("pix2pix_dir") else None
        p2p_txt = f"{p2p['steps']}, {p2p['psnr']:.2f} dB / {p2p['ssim']:.3f}" if p2p else "–"
        print(f"| {m['experiment'].removeprefix('eval-')} | {ds['train']:,} / {ds['test']:,} | {s1['steps']}, "
              f"{s1['psnr']:.2f} dB / {s1['ssim']:.3f} | {p2p_txt} | {budget if budget is not None else '–'} |")
    for d in args.report_dirs:
        m = read_json(Path(d) / "metrics.json")
        st = m["settings"]
        ms = m["methods"]
        faith = "HED AP / F1" if m["faithfulness_kind"] == "edges" else "12x12 PSNR"
        print(f"\n**{m['experiment'].removeprefix('eval-')}** — {m['num_inputs']} test inputs x {st['num_outputs']} "
              f"outputs, composition {st.get('mode', 'matched')}; FID/KID on {st['fid_outputs_per_input']} outputs per "
              f"input vs {next(iter(ms.values()))['num_real']} real photos; {m['wall_seconds'] / 60:.0f} min\n")
        print(f"| method | Rand-1 LPIPS | Oracle LPIPS | Rand-1 PSNR / SSIM | Oracle PSNR / SSIM | {faith} | "
              "diversity | seam rate | FID | KID | spectral dist. (dB) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for key in ("pixelnn", "pix2pix", "stage1"):
            if key not in ms:
                continue
            r = ms[key]
            if m["faithfulness_kind"] == "edges":
                fa = f"{fmt(r.get('faithfulness_ap'))} / {fmt(r.get('faithfulness_f1'))}"
            else:
                fa = f"{fmt(r.get('faithfulness_psnr'), 2)} dB"
            print(f"| {LABELS[key]} | {fmt(r['rand1_lpips'])} | {fmt(r['oracle_lpips'])} | "
                  f"{fmt(r['rand1_psnr'], 2)} / {fmt(r['rand1_ssim'])} | {fmt(r['oracle_psnr'], 2)} / "
                  f"{fmt(r['oracle_ssim'])} | {fa} | {fmt(r.get('diversity_lpips'))} | {fmt(r.get('seam_rate'))} | "
                  f"{fmt(r['fid'], 1)} | {fmt(r['kid'])} | {fmt(r['spectral_distance_db'], 2)} |")
        p, g, s = ms["pixelnn"], ms.get("pix2pix"), ms["stage1"]
        if g:
            ratio = p["diversity_lpips"] / max(g["diversity_lpips"], 1e-9)
            aims.append((m["experiment"].removeprefix("eval-"),
                         (p["oracle_lpips"] < g["oracle_lpips"], f"{p['oracle_lpips']:.3f} vs {g['oracle_lpips']:.3f}"),
                         (ratio >= 5, f"{ratio:.1f}x"),
                         (p["fid"] <= g["fid"], f"{p['fid']:.1f} vs {g['fid']:.1f}"),
                         (p["spectral_distance_db"] < s["spectral_distance_db"],
                          f"{p['spectral_distance_db']:.2f} vs {s['spectral_distance_db']:.2f} dB")))
    if aims:
        print("\n| experiment | Oracle LPIPS < pix2pix | diversity >= 5x pix2pix | FID <= pix2pix | "
              "spectrum closer than stage 1 |")
        print("|---|---|---|---|---|")
        for name, *checks in aims:
            print(f"| {name} | " + " | ".join(f"{'met' if ok else '**missed**'} ({txt})" for ok, txt in checks) + " |")


if __name__ == "__main__":
    main()
