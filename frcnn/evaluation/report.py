"""One evaluation as one page: ``report.html``, self-contained (figures inline as PNG data, no script or
style from the network, no server), with every figure also written as a PNG beside it.

Sections: the 12 COCO stats, per-class AP, PR curves, and with an analysis (:mod:`frcnn.evaluation.analysis`)
TIDE's error bars, COCO's analyze figure, the confusion matrix, calibration, and the images with the most
errors drawn with each detection coloured by its error type. Several models (``predictions=[a,b]``) share
one page: their numbers side by side, their figures one after the other.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from frcnn.evaluation.analysis import CURVES, IMAGE_COLUMNS, Analysis
from frcnn.evaluation.coco_eval import STAT_NAMES
from frcnn.evaluation.plots import (
    TYPE_COLOURS,
    plot_calibration,
    plot_coco_analyze,
    plot_coco_analyze_grid,
    plot_confusion,
    plot_tide,
)
from frcnn.evaluation.tide import DETECTION_TYPES, MAIN_ERRORS, SPECIAL_ERRORS

TYPE_MEANING = {
    "TP": "a true positive at IoU 0.5",
    "Cls": "right place (IoU ≥ 0.5 with an object), wrong class",
    "Loc": "right class, poorly placed (best IoU with an object of its class in [0.1, 0.5])",
    "Both": "wrong class and poorly placed",
    "Dupe": "a second detection of an object already found",
    "Bkg": "on background (IoU ≤ 0.1 with every object)",
    "Miss": "an object no detection found, and no Cls / Loc error points at",
    "FN": "an object no detection above the score threshold found (per image)",
}


@dataclass(frozen=True)
class ModelResult:
    """One model's evaluation: ``name`` (a column heading), ``source`` (checkpoint or results file),
    ``metrics`` (``stats``, ``per_class_ap``, ``num_detections``, and ``analysis``: the analysis's
    :meth:`~frcnn.evaluation.analysis.Analysis.to_json`), its PR-curve PNG, and its analysis."""

    name: str
    source: str
    metrics: dict[str, Any]
    pr_curves: Path | None
    analysis: Analysis | None = None


def write_report(out: Path, models: list[ModelResult], *, ground_truth: str, image_root: Path | None = None, worst: int = 20) -> Path:
    """Write the figures and ``out / "report.html"``; returns the page's path.

    Args:
        image_root: the folder of the ground truth's ``file_name`` entries; without it the gallery of the
            images with the most errors is left out (the page says how to get it).
        worst: how many images the gallery draws per model.
    """
    out = Path(out)
    multi = len(models) > 1
    sections = [_summary(models), _per_class_ap(models)]
    sections += [_figure(f"PR curves — {m.name}" if multi else "PR curves", m.pr_curves) for m in models if m.pr_curves]
    analysed = [m for m in models if m.analysis is not None]
    if analysed:
        sections += [_tide(analysed, out), _coco_analyze(analysed, out), _confusion(analysed, out), _calibration(analysed, out)]
        sections += [_gallery(m, out, image_root, worst, multi) for m in analysed]
    else:
        sections.append("<p class='note'>Run with <code>analyze=true</code> for TIDE's error types, COCO's analyze breakdown, "
                        "the confusion matrix, calibration and the images with the most errors.</p>")
    title = "evaluation: " + " vs ".join(m.name for m in models)
    sources = "".join(f"<li><b>{_e(m.name)}</b>: {_e(m.source)} ({m.metrics['num_detections']} detections)</li>" for m in models)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p>ground truth: {_e(ground_truth)}</p><ul>{sources}</ul>"
            + _contents(sections) + "".join(sections) + f"<script>{_SORT_JS}</script></body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _summary(models: list[ModelResult]) -> str:
    rows = [[n, *(m.metrics["stats"][n] for m in models)] for n in STAT_NAMES]
    return _section("COCO stats", "The 12 numbers of COCO's summary (AP and AR at IoU 0.5:0.95 unless named).",
                    _table(["stat", *(m.name for m in models)], rows, sortable=False))


def _per_class_ap(models: list[ModelResult]) -> str:
    names = list(models[0].metrics["per_class_ap"])
    head = ["class", *(f"AP {m.name}" for m in models)]
    rows = [[n, *(m.metrics["per_class_ap"].get(n) for m in models)] for n in names]
    for m in models:
        if m.analysis is not None:
            k_of = {n: k for k, n in enumerate(m.analysis.data.category_names)}
            head.append(f"AP50 {m.name}")
            for row, n in zip(rows, names):
                row.append(m.analysis.tide.per_class_ap[k_of[n]] / 100)
    return _section("Per-class AP", "AP@[.5:.95] per category; AP50 from the same matching as the error analysis. Click a heading to sort.",
                    _table(head, rows))


def _tide(models: list[ModelResult], out: Path) -> str:
    data = {m.name: m.metrics["analysis"]["tide"] for m in models}
    png = plot_tide(data, out / "tide.png")
    overall = _table(["", *(f"{e}" for e in (*MAIN_ERRORS, *SPECIAL_ERRORS)), "AP50"],
                     [[f"dAP {n}", *(t["dap"][e] for e in (*MAIN_ERRORS, *SPECIAL_ERRORS)), t["ap50"]] for n, t in data.items()]
                     + [[f"count {n}", *(t["counts"][e] for e in MAIN_ERRORS), "", "", ""] for n, t in data.items()], sortable=False)
    legend = "<dl class='legend'>" + "".join(f"<dt>{_swatch(e)}{e}</dt><dd>{_e(TYPE_MEANING[e])}</dd>" for e in MAIN_ERRORS) + "</dl>"
    per_class = ""
    for m in models:
        t = m.analysis.tide
        rows = [[n, t.per_class_ap[k], *(t.per_class_dap[e][k] for e in (*MAIN_ERRORS, *SPECIAL_ERRORS)),
                 *(int(t.per_class_counts[e][k]) for e in MAIN_ERRORS)] for k, n in enumerate(m.analysis.data.category_names)]
        head = ["class", "AP50", *(f"dAP {e}" for e in (*MAIN_ERRORS, *SPECIAL_ERRORS)), *(f"# {e}" for e in MAIN_ERRORS)]
        per_class += f"<h3>per class — {_e(m.name)}</h3>" + _table(head, rows)
    text = ("TIDE (Bolya et al., ECCV 2020) sorts every false positive and missed object into one type; dAP is the AP50 "
            "(in points, 0-100) an oracle fixing only that type would add. FP removes every false positive, FN every miss.")
    return _section("TIDE error types", text, legend + _img(png) + overall + per_class)


def _coco_analyze(models: list[ModelResult], out: Path) -> str:
    body = ""
    for m in models:
        a = m.analysis
        suffix = file_suffix(m.name, len(models) > 1)
        with np.errstate(all="ignore"):
            overall = np.nanmean(a.curves, axis=1)  # [7, R] the mean curve of the categories with ground truth
        body += f"<h3>{_e(m.name)}</h3>" if len(models) > 1 else ""
        body += _img(plot_coco_analyze(np.nan_to_num(overall), a.curve_ap, f"all classes — {m.name}", out / f"coco_analyze{suffix}.png"))
        body += _img(plot_coco_analyze_grid(a.curves, a.data.category_names, out / f"coco_analyze_per_class{suffix}.png"))
        rows = [[n, *(a.curves[i, k].mean() for i in range(len(CURVES)))] for k, n in enumerate(a.data.category_names)]
        body += _table(["class", *CURVES], [["all", *a.curve_ap.values()], *rows])
    sims = {tuple(m.analysis.data.supercategories) for m in models}
    note = ""
    for sup in sims:
        if len(set(sup)) == 1 and len(sup) > 1:
            note = f" Here every category has the supercategory “{_e(sup[0])}”, so Sim equals Oth."
        elif len(set(sup)) == len(sup):
            note = " Here no two categories share a supercategory, so Sim equals Loc."
    text = ("COCO's analyze (Hoiem et al.): the PR curve under ever more forgiving judges. C75, C50: IoU 0.75, 0.5; Loc: IoU 0.1; "
            "Sim: false positives on objects of the same supercategory removed; Oth: on any other class removed; "
            "BG: all false positives removed; FN: every error removed. The gap between two curves is what that error costs." + note)
    return _section("COCO analyze", text, body)


def _confusion(models: list[ModelResult], out: Path) -> str:
    body = ""
    for m in models:
        cm = m.metrics["analysis"]["confusion_matrix"]
        png = plot_confusion(np.array(cm["counts"]), cm["rows"], cm["columns"], f"{m.name}: IoU 0.5, score ≥ {cm['score_thresh']:g}",
                             out / f"confusion_matrix{file_suffix(m.name, len(models) > 1)}.png")
        head = ["ground truth ↓ / detected as →", *cm["columns"]]
        body += _img(png) + "<h3>counts</h3>" + _table(head, [[r, *c] for r, c in zip(cm["rows"], cm["counts"])], sortable=False)
        body += "<h3>share of each row</h3>" + _table(head, [[r, *c] for r, c in zip(cm["rows"], cm["row_normalized"])], sortable=False)
    score = models[0].analysis.score_thresh
    text = (f"Detections scored ≥ {score:g} against the objects, each object counted once: first COCO's matching (the diagonal), "
            "then each left-over detection takes the left-over object it overlaps most (IoU ≥ 0.5). "
            "Last row: detections on no object; last column: objects no detection found. Colour: share of the row.")
    return _section("Confusion matrix", text, body)


def _calibration(models: list[ModelResult], out: Path) -> str:
    data = {m.name: m.metrics["analysis"]["calibration"] for m in models}
    png = plot_calibration(data, out / "calibration.png")
    rows = []
    for name, c in data.items():
        for b in range(len(c["count"])):
            rows.append([name, f"{c['bins'][b]:.1f}–{c['bins'][b + 1]:.1f}", c["count"][b], c["mean_score"][b], c["precision"][b]])
    summary = _table(["model", "ECE", "MCE"], [[n, c["ece"], c["mce"]] for n, c in data.items()], sortable=False)
    text = ("Is a detection scored 0.8 right 80% of the time? Precision at IoU 0.5 per score bin against the bin's mean score. "
            "ECE: the gap averaged over detections; MCE: the largest gap of a bin.")
    return _section("Calibration", text, _img(png) + summary + _table(["model", "score", "detections", "mean score", "precision"], rows))


def _gallery(m: ModelResult, out: Path, image_root: Path | None, n: int, multi: bool) -> str:
    a = m.analysis
    title = f"Images with the most errors — {m.name}" if multi else "Images with the most errors"
    worst = a.worst_images(n)
    rows = [[int(a.data.image_ids[i]), *(int(v) for v in a.per_image[i])] for i in worst]
    table = _table(["image id", *IMAGE_COLUMNS], rows)
    text = (f"The {len(worst)} images with the most false positives and missed objects among the detections scored ≥ "
            f"{a.score_thresh:g} (every image's counts are in metrics.json). Each detection is drawn in its type's colour; "
            "objects are white, missed ones pink.")
    legend = "<p class='legend'>" + " ".join(f"{_swatch(t)}{t}" for t in (*DETECTION_TYPES, "FN")) + "</p>"
    if image_root is None:
        return _section(title, text, "<p><i>Pass <code>images=/path/to/image/folder</code> to draw these images.</i></p>" + table)
    folder = out / f"worst{file_suffix(m.name, multi)}"
    folder.mkdir(exist_ok=True)
    cards = ""
    for i in worst:
        image_id, file_name = int(a.data.image_ids[i]), a.data.file_names[i]
        try:
            drawn = draw_errors(Image.open(Path(image_root) / file_name).convert("RGB"), a, i)
        except OSError as err:
            cards += f"<figure><figcaption>image {image_id}: could not be read ({_e(str(err))})</figcaption></figure>"
            continue
        path = folder / f"{image_id}.png"
        drawn.save(path)
        counts = ", ".join(f"{c} {int(v)}" for c, v in zip(IMAGE_COLUMNS, a.per_image[i]) if v)
        cards += f"<figure>{_img(path)}<figcaption>image {image_id} ({_e(file_name)}): {counts}</figcaption></figure>"
    return _section(title, text, legend + f"<div class='gallery'>{cards}</div>" + table)


def draw_errors(image: Image.Image, a: Analysis, i: int) -> Image.Image:
    """Image ``i`` of the analysis with its objects (white; missed: pink) and its detections scored ≥ the
    threshold, each in its TIDE type's colour and labelled ``type class score``."""
    d = a.data
    scale = 640 / max(image.size)  # one size for every image, so that the labels read alike
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)

    def rect(box: np.ndarray, colour: str, width: int) -> tuple[float, float]:
        x, y, w, h = (float(v) * scale for v in box)
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        return x, y

    found = a.gt_found
    for g in np.flatnonzero(d.gt_image == i):
        rect(d.gt_box[g], "#ffffff" if found[g] or d.gt_crowd[g] else TYPE_COLOURS["FN"], 3 if not found[g] else 1)
    rows = np.flatnonzero((d.dt_image == i) & (d.dt_score >= a.score_thresh) & ~a.tide.dt_ignored)
    for r in rows[::-1]:  # the highest score drawn last, on top
        kind = DETECTION_TYPES[a.tide.dt_type[r]]
        x, y = rect(d.dt_box[r], TYPE_COLOURS[kind], 2)
        label = f"{kind} {d.category_names[d.dt_category[r]]} {d.dt_score[r]:.2f}"
        left, top, right, bottom = draw.textbbox((x + 2, y + 1), label, font=font)
        draw.rectangle([left - 2, top - 1, right + 2, bottom + 1], fill=TYPE_COLOURS[kind])
        draw.text((x + 2, y + 1), label, fill="#ffffff", font=font)
    return image


# --- HTML pieces -------------------------------------------------------------------------------------


def _section(title: str, text: str, body: str) -> str:
    """A titled section; ``text`` and ``body`` are HTML already (their callers escape what they insert)."""
    anchor = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"<section id='{anchor}'><h2>{_e(title)}</h2><p>{text}</p>{body}</section>"


def _contents(sections: list[str]) -> str:
    items = []
    for s in sections:
        if s.startswith("<section id='"):
            anchor = s[len("<section id='") : s.index("'", len("<section id='"))]
            title = s[s.index("<h2>") + 4 : s.index("</h2>")]
            items.append(f"<a href='#{anchor}'>{title}</a>")
    return "<nav>" + " · ".join(items) + "</nav>"


def _table(head: list[str], rows: list[list[Any]], sortable: bool = True) -> str:
    cls = " class='sortable'" if sortable else ""
    th = "".join(f"<th>{_e(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<div class='scroll'><table{cls}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>"


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "<td data-v='-1e9' class='na'>n/a</td>"
    if isinstance(v, (bool, np.bool_)):
        return f"<td>{v}</td>"
    if isinstance(v, (int, np.integer)):
        return f"<td data-v='{int(v)}' class='num'>{int(v)}</td>"
    if isinstance(v, (float, np.floating)):
        return f"<td data-v='{float(v):.6g}' class='num'>{float(v):.4f}</td>"
    return f"<td>{_e(str(v))}</td>"


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{_e(Path(path).name)}'>"


def _figure(title: str, path: Path) -> str:
    return _section(title, "Precision against recall: all classes at three IoU thresholds, and each class at IoU 0.5.", _img(path))


def _swatch(kind: str) -> str:
    return f"<span class='swatch' style='background:{TYPE_COLOURS[kind]}'></span>"


def file_suffix(name: str, multi: bool) -> str:
    """The file-name suffix of a model's figures: none for a single model."""
    return "_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name) if multi else ""


def _e(s: str) -> str:
    return html.escape(s, quote=True)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:0 auto;padding:1em 1.5em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-bottom:.3em}
nav{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #eee;font-size:.9em;z-index:1}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.na{color:#999}th{background:#f4f4f4;position:sticky;top:0}table.sortable th{cursor:pointer}
table.sortable th:hover{background:#e8e8e8}tbody tr:nth-child(even){background:#fafafa}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:1em}
figure{margin:0;border:1px solid #ddd;padding:.4em;background:#fafafa}figcaption{font-size:.8em}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #555;margin:0 .3em 0 .8em;vertical-align:middle}
dl.legend{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em;font-size:.9em}dl.legend dt{font-weight:bold}dl.legend dd{margin:0}
"""

# Click a heading to sort by that column (numbers by value, the rest alphabetically); again to reverse.
_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = th.closest('table'), tbody = table.tBodies[0], rows = Array.from(tbody.rows);
    var col = Array.from(th.parentNode.children).indexOf(th), dir = th.dataset.dir === 'desc' ? 1 : -1;
    th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col], y = b.cells[col];
      var u = x.dataset.v, v = y.dataset.v;
      if (u !== undefined && v !== undefined) return dir * (parseFloat(u) - parseFloat(v));
      return dir * x.textContent.localeCompare(y.textContent);
    });
    rows.forEach(function(r){ tbody.appendChild(r); });
  });
});
"""

