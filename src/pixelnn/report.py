"""Small, dependency-free HTML pages for results people look at (demo, training reports)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from pixelnn.io import need, read_json, write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img.grid{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}
figure{margin:1em 0}figcaption{color:#555;font-size:.92em}
code{background:#f4f4f4;padding:0 .25em}
"""


@dataclass
class Section:
    """A titled block: paragraphs, an optional table (header + rows) and figures (path, caption)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: list[list[str]] | None = None
    figures: list[tuple[str, str]] = field(default_factory=list)


def render(title: str, sections: list[Section], intro: str = "") -> str:
    """Render sections to an HTML string (text is escaped; figure paths are relative URLs)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if intro:
        out.append(f"<p>{html.escape(intro)}</p>")
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        if s.table:
            head, *rows = s.table
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</table>")
        for src, caption in s.figures:
            out.append(f"<figure><img class='grid' src='{html.escape(src)}' alt='{html.escape(caption)}'>"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_page(path: str | Path, title: str, sections: list[Section], intro: str = "") -> Path:
    """Write an HTML page atomically and return its path."""
    write_text(path, render(title, sections, intro))
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Evaluation pages (``pixelnn report``)

_METHOD_LABELS = {"pixelnn": "PixelNN", "pix2pix": "pix2pix", "stage1": "Stage 1 (regressor)"}


def _fmt(v: object, digits: int = 3, scale: float = 1.0) -> str:
    return "–" if v is None else f"{float(v) * scale:.{digits}f}"  # type: ignore[arg-type]


def _composition(metrics: dict) -> str:
    """The PixelNN composition mode and colour of an evaluation, e.g. ``matched, rgb``: from ``settings.options``
    (the synthesis options, recorded since issue 11), else ``settings.mode`` / ``settings.color`` (older files),
    else the pipeline's defaults, matched and rgb (evaluations written before they were recorded)."""
    st = metrics.get("settings", {})
    opts = st.get("options") or st
    return f"{opts.get('mode', 'matched')}, {opts.get('color', 'rgb')}"


def evaluation_sections(metrics: dict, image_dir: str) -> list[Section]:
    """Sections of one experiment's page from its ``metrics.json`` (figures relative to the page)."""
    methods = [m for m in ("pixelnn", "pix2pix", "stage1") if m in metrics["methods"]]
    ms = metrics["methods"]
    n_out = metrics["settings"]["num_outputs"]
    quality = [["method", "LPIPS ↓", "PSNR ↑", "SSIM ↑", "best PSNR ↑", "best SSIM ↑"]]
    for m in methods:
        s = ms[m]
        if m == "stage1":
            quality.append([_METHOD_LABELS[m], _fmt(s["rand1_lpips"]), _fmt(s["rand1_psnr"], 2), _fmt(s["rand1_ssim"]),
                            "", ""])
            continue
        quality.append([f"{_METHOD_LABELS[m]} (Rand-1)", _fmt(s["rand1_lpips"]), _fmt(s["rand1_psnr"], 2),
                        _fmt(s["rand1_ssim"]), "", ""])
        if s.get("top1_lpips") is not None:  # evaluations since issue 16: the output ranked first
            quality.append([f"{_METHOD_LABELS[m]} (Top-1)", _fmt(s["top1_lpips"]), _fmt(s.get("top1_psnr"), 2),
                            _fmt(s.get("top1_ssim")), "", ""])
        quality.append([f"{_METHOD_LABELS[m]} (Oracle)", _fmt(s["oracle_lpips"]), _fmt(s["oracle_psnr"], 2),
                        _fmt(s["oracle_ssim"]), _fmt(s["oracle_own_psnr"], 2), _fmt(s["oracle_own_ssim"])])
    faith = metrics.get("faithfulness_kind")
    head = ["method"]
    if faith == "superres_psnr":
        head.append("input PSNR ↑ (dB)")
    elif faith == "edges":
        head += ["edge AP ↑", "edge best F1 ↑"]
    head += ["diversity LPIPS ↑", "seam rate", "seam visibility ↓", "FID ↓", "KID ×1000 ↓", "spectral distance ↓ (dB)"]
    other = [head]
    for m in methods:
        s = ms[m]
        row = [_METHOD_LABELS[m]]
        if faith == "superres_psnr":
            row.append(_fmt(s.get("faithfulness_psnr"), 2))
        elif faith == "edges":
            row += [_fmt(s.get("faithfulness_ap")), _fmt(s.get("faithfulness_f1"))]
        kid = "–" if s.get("kid") is None else f"{s['kid'] * 1000:.2f} ± {s['kid_std'] * 1000:.2f}"
        row += [_fmt(s.get("diversity_lpips")), _fmt(s.get("seam_rate")), _fmt(s.get("seam_visibility"), 3),
                _fmt(s.get("fid"), 1), kid,
                _fmt(s.get("spectral_distance_db"), 2)]
        other.append(row)
    st = metrics["settings"]
    proto = metrics["protocol"]
    normals = normals_table(metrics)
    sections = [
        Section("Fidelity to the photo (paper Tables 1–2)", [
            f"{metrics['num_inputs']} inputs of the {metrics['split']} split ({metrics['split_size']} pairs), "
            f"{n_out} outputs per input; PixelNN composition mode and colour: {_composition(metrics)}. Rand-1: one "
            f"output drawn with seed {st['seed']}. "
            + (f"Top-1: {metrics['protocol']['top1']}. " if "top1" in metrics.get("protocol", {}) else "")
            + "Oracle: the output with the lowest LPIPS (its PSNR and SSIM "
            "alongside); best PSNR / best SSIM: each metric's own best output."],
            table=quality),
        Section("Faithfulness, diversity, coherence, realism, frequency content", [
            f"Faithfulness: {proto['faithfulness']}. Diversity: {proto['diversity']}. "
            f"Seam rate (lower: longer coherent copies): {proto.get('seam_rate', 'not measured in this evaluation')}. "
            f"Seam visibility: {proto.get('seam_visibility', 'not measured in this evaluation')}. "
            f"FID/KID: {proto['fid_kid']}. Spectral distance: {proto['spectral_distance_db']}."], table=other),
        *([Section("Surface normals (paper Tables 1–2)", [
            f"Normals: {proto.get('normals', '')}. Angles in degrees (↓); % of pixels within 11.25°, 22.5°, 30° (↑); "
            "no face: inputs whose output (Rand-1), or all of whose outputs (Oracle), show no face to the face mesh; "
            "coverage: share of the real face masks' pixels scored"
            + (f"; {metrics['normals']['real_no_face']} real photo(s) without a face left out"
               if (metrics.get("normals") or {}).get("real_no_face") else "") + "."], table=normals)]
          if normals else []),
        Section("Frequency analysis (paper Fig. 4)", figures=[(f"{image_dir}/spectrum.png",
                                                               "Radially averaged power spectra")]),
    ]
    timing = [["stage", "seconds"]] + [[k, f"{v:.1f}"] for k, v in metrics["timings_seconds"].items()]
    sections.append(Section("Settings and timings", [
        f"Model {metrics['model_dir']}, data {metrics['data_dir']}, library {metrics['library_dir']}, "
        f"pix2pix {metrics.get('pix2pix_dir') or 'not evaluated'}.",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in st.items() if k != "options") + "."]
        + ([f"PixelNN synthesis options: {', '.join(f'{k}={v}' for k, v in st['options'].items())}."]
           if isinstance(st.get("options"), dict) else []), table=timing))
    return sections


def normals_table(metrics: dict) -> list[list[str]] | None:
    """The paper's Table 1/2 layout for one evaluation: per method, Rand-1 and Oracle rows of edge AP (when
    the evaluation has it: edge inputs), the six angular statistics, the no-face count and the coverage; None when
    the evaluation has no normals metrics (not a face dataset, turned off, or written before they existed)."""
    from pixelnn.evaluation.angular import LABELS, STATISTICS

    ms = metrics["methods"]
    methods = [m for m in ("pixelnn", "pix2pix", "stage1") if m in ms and "normals_inputs" in ms[m]]
    if not methods:
        return None
    edge_ap = metrics.get("faithfulness_kind") == "edges"
    head = ["method"] + (["edge AP ↑"] if edge_ap else []) + [
        f"{LABELS[k]} {'↓' if k in ('mean', 'median', 'rmse') else '↑'}" for k in STATISTICS] + ["no face", "coverage"]
    rows = [head]
    for m in methods:
        s = ms[m]
        for kind, label in (("rand1", "Rand-1"), ("oracle", "Oracle")):
            if m == "stage1" and kind == "oracle":
                continue  # one output: its Oracle is its Rand-1
            name = _METHOD_LABELS[m] if m == "stage1" else f"{_METHOD_LABELS[m]} ({label})"
            row = [name] + ([_fmt(s.get("faithfulness_ap"), 2)] if edge_ap else [])
            row += [_fmt(s.get(f"{kind}_normals_{k}"), 1) for k in STATISTICS]
            cov = s.get(f"normals_{kind}_coverage")
            row += [f"{s.get(f'normals_{kind}_no_face', 0)} of {s.get('normals_inputs', 0)}",
                    _fmt(cov, 1, 100) + ("%" if cov is not None else "")]
            rows.append(row)
    return rows


def write_evaluation_page(report_dir: str | Path, page_dir: str | Path, name: str | None = None) -> Path:
    """One experiment's HTML page in ``page_dir`` from a REPORT_DIR written by ``pixelnn evaluate``.

    Writes ``page_dir/NAME.html`` and its images in ``page_dir/NAME/``: the spectrum plot and one
    strip per example input (input, stage 1, eight PixelNN outputs, a correspondence map, eight
    pix2pix samples when evaluated, the photo).
    """
    import shutil

    import numpy as np

    from pixelnn.data.dataset import image_grid
    from pixelnn.errors import PixelNNError
    from pixelnn.io import atomic_path, save_image

    report_dir, page_dir = Path(report_dir), Path(page_dir)
    path = report_dir / "metrics.json"
    if not path.is_file():
        raise PixelNNError(f"{report_dir} is not an evaluation folder (no metrics.json); run `pixelnn evaluate` first")
    metrics = read_json(path, expect=dict)
    if metrics.get("format") != "pixelnn-evaluation":
        raise PixelNNError(f"{path} is not a pixelnn-evaluation file")
    need(metrics, "methods", path, dict)
    name = name or metrics.get("experiment") or report_dir.name
    if not isinstance(name, str):
        raise PixelNNError(f"{path}: 'experiment' should be a string, got {name!r}")
    img_dir = page_dir / name
    img_dir.mkdir(parents=True, exist_ok=True)
    if (report_dir / "spectrum.png").is_file():
        with atomic_path(img_dir / "spectrum.png") as tmp:
            shutil.copyfile(report_dir / "spectrum.png", tmp)
    try:
        sections = evaluation_sections(metrics, name)
        task = metrics.get("task", {})
        intro = (f"Task {task.get('name')}" + (f" (edges: {task.get('edge_method')})" if task.get("name") == "edges"
                                                else "")
                 + f"; PixelNN composition {_composition(metrics)}; "
                 f"evaluated in {metrics.get('wall_seconds', 0) / 60:.1f} min.")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a hand-edited or damaged file
        raise PixelNNError(f"{path}: unexpected content ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           f"re-run `pixelnn evaluate`") from None
    ex_path = report_dir / "examples.npz"
    if ex_path.is_file():
        import zipfile

        try:
            with np.load(ex_path, allow_pickle=False) as ex:
                has_p2p = "pix2pix" in ex.files
                figs = []
                for i in range(len(ex["photos"])):
                    row = [ex["inputs"][i:i + 1], ex["stage1"][i:i + 1], ex["pixelnn"][i], ex["correspondence"][i:i + 1]]
                    if has_p2p:
                        row.append(ex["pix2pix"][i])
                    row.append(ex["photos"][i:i + 1])
                    file = f"example_{i + 1:02d}.png"
                    save_image(img_dir / file, image_grid([np.concatenate(row)]))
                    j = int(ex["correspondence_index"][i]) + 1 if "correspondence_index" in ex.files else 1
                    figs.append((f"{name}/{file}", f"Input {i + 1}; the correspondence map is of PixelNN output {j} of 8"))
        except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
            raise PixelNNError(f"cannot read {ex_path}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                               f"(truncated or damaged?); re-run `pixelnn evaluate`") from None
        order = ("input, stage 1, eight PixelNN outputs, the correspondence map of one of them (each pixel coloured by "
                 "the exemplar it was copied from, shaded by the source position)")
        order += ", eight pix2pix samples" if has_p2p else " (pix2pix not evaluated)"
        sections.insert(2, Section("Examples", [order + ", the photo."], figures=figs))
    return write_page(page_dir / f"{name}.html", f"PixelNN evaluation: {name}", sections, intro)


def report_command(report_dirs: list[str | Path], page_dir: str | Path) -> Path:
    """``pixelnn report``: one page per REPORT_DIR plus ``index.html`` linking them; returns the index path."""
    import html as _html

    from pixelnn.errors import PixelNNError
    from pixelnn.io import write_text

    page_dir = Path(page_dir)
    names, rows = [], []
    for d in report_dirs:
        d = Path(d)
        if not (d / "metrics.json").is_file():
            raise PixelNNError(f"{d} is not an evaluation folder (no metrics.json); run `pixelnn evaluate` first")
        metrics = read_json(d / "metrics.json", expect=dict)  # read once: name and table row
        if metrics.get("format") != "pixelnn-evaluation":
            raise PixelNNError(f"{d / 'metrics.json'} is not a pixelnn-evaluation file")
        need(metrics, "methods", d / "metrics.json", dict)
        name = metrics.get("experiment") or d.name
        if name in names:
            name = f"{name}-{len(names) + 1}"
        page = write_evaluation_page(d, page_dir, name)
        names.append(name)
        m = metrics["methods"]
        pn = m.get("pixelnn", {})
        rows.append(f"<tr><td><a href='{_html.escape(page.name)}'>{_html.escape(name)}</a></td>"
                    f"<td>{_html.escape(_composition(metrics))}</td>"
                    f"<td>{_fmt(pn.get('rand1_lpips'))}</td><td>{_fmt(pn.get('top1_lpips'))}</td>"
                    f"<td>{_fmt(pn.get('oracle_lpips'))}</td>"
                    f"<td>{_fmt(pn.get('diversity_lpips'))}</td><td>{_fmt(pn.get('seam_rate'))}</td>"
                    f"<td>{_fmt(pn.get('fid'), 1)}</td><td>{_fmt(m.get('pix2pix', {}).get('fid'), 1)}</td>"
                    f"<td>{_fmt(pn.get('rand1_normals_mean'), 1)} / {_fmt(pn.get('oracle_normals_mean'), 1)}</td></tr>")
    body = [f"<!doctype html><html><head><meta charset='utf-8'><title>PixelNN evaluations</title>"
            f"<style>{_STYLE}</style></head><body><h1>PixelNN evaluations</h1>",
            "<table><tr><th>experiment</th><th>composition</th><th>PixelNN LPIPS (Rand-1)</th>"
            "<th>PixelNN LPIPS (Top-1)</th><th>PixelNN LPIPS (Oracle)</th><th>PixelNN diversity</th><th>PixelNN seam rate</th><th>PixelNN FID</th>"
            "<th>pix2pix FID</th><th>PixelNN normals mean angle ° (Rand-1 / Oracle)</th></tr>", *rows, "</table></body></html>\n"]
    index = page_dir / "index.html"
    write_text(index, "\n".join(body))
    return index
