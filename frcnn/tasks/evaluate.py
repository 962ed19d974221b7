"""The evaluation task behind ``scripts/evaluate.py``: a config in, a folder of scores out.

Two modes (``conf/evaluate.yaml``): score a checkpoint on a COCO-format split (its own validation
split by default, in the ``data.format`` it was trained on), or score COCO results files of any model
against ground truth (several side by side: ``predictions=[a.json,b.json]``). Writes into
``cfg.output_dir``: ``detections.json`` (COCO results, checkpoint mode only), ``metrics.json`` (the 12
stats, per-class AP, the number of detections, and with ``analyze=true`` the error analysis of
:mod:`frcnn.evaluation.analysis`), ``per_class_ap.md``, ``pr_curves.png`` (when there is at least one
detection), the analysis figures, and ``report.html`` (:mod:`frcnn.evaluation.report`), one page with all of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from pycocotools.coco import COCO

from frcnn.config import amp_dtype, resolve_device, validate_evaluate_config
from frcnn.data.coco import CocoDetection, collate, load_coco
from frcnn.data.formats import split_annotations
from frcnn.data.images import DEFAULT_MAX_PIXELS
from frcnn.errors import InputError, MissingFileError
from frcnn.evaluation.analysis import analyze
from frcnn.evaluation.coco_eval import (
    STAT_NAMES,
    check_backend,
    evaluate_results,
    per_class_table,
    predict,
)
from frcnn.evaluation.plots import plot_pr_curves
from frcnn.evaluation.report import ModelResult, file_suffix, write_report
from frcnn.evaluation.tide import MAIN_ERRORS, SPECIAL_ERRORS
from frcnn.tasks.load import load_model, proposal_overrides


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.checkpoint`` or ``cfg.predictions`` (one results file or several), write the report files, print the scores.

    Prints the 12 stats on one line (``AP=0.1234 AP50=...``), the per-class table, with ``analyze=true``
    TIDE's dAP line, and ``COCO AP@[.5:.95] = ...; results in <output_dir>``.

    Returns:
        ``{"stats": {name: value}, "per_class_ap": {class name: AP}, "num_detections": int}`` (and
        ``"analysis"`` with ``analyze=true``), as written to ``metrics.json``; for several results files
        ``{"models": {name: that}}``.

    Raises:
        UserError: a bad config value, a missing or malformed predictions, annotations or checkpoint
            file, an unreadable image, or results naming categories or images the ground truth lacks.
    """
    validate_evaluate_config(cfg)
    backend = cfg.get("backend", "pycocotools")
    check_backend(backend)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.predictions:
        runs, gt = _read_results(cfg)
        image_root = cfg.images
    else:
        results, gt, image_root = _predict_split(cfg)
        (out / "detections.json").write_text(json.dumps(results))
        runs = [(Path(cfg.checkpoint).stem, str(cfg.checkpoint), results)]
    multi = len(runs) > 1
    models = [_score(name, source, results, gt, out, backend, cfg, multi) for name, source, results in runs]
    metrics = {m.name: m.metrics for m in models}
    metrics = {"models": metrics} if multi else metrics[models[0].name]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    analysis = cfg.get("analysis") or {}
    report = write_report(out, models, ground_truth=str(cfg.annotations or "the checkpoint's validation split"),
                          image_root=Path(image_root) if image_root else None, worst=int(analysis.get("worst_images", 20)))
    for m in models:
        prefix = f"{m.name}: " if multi else ""
        print(prefix + " ".join(f"{n}={m.metrics['stats'][n]:.4f}" for n in STAT_NAMES))
        print(per_class_table(m.metrics["per_class_ap"]))
        if m.analysis is not None:
            t = m.analysis.tide
            print(f"{prefix}TIDE dAP (AP50 points, AP50 {t.ap:.2f}): " + " ".join(f"{e} {t.dap[e]:.2f}" for e in (*MAIN_ERRORS, *SPECIAL_ERRORS)))
    scores = "; ".join(f"{m.name + ': ' if multi else ''}COCO AP@[.5:.95] = {m.metrics['stats']['AP']:.4f}" for m in models)
    print(f"{scores}; results in {out}; report: {report}")
    return metrics


def _score(name: str, source: str, results: list[dict[str, Any]], gt: COCO, out: Path, backend: str, cfg: DictConfig, multi: bool) -> ModelResult:
    """One results file's COCO scores, PR curves, per-class table and (``cfg.analyze``) error analysis."""
    suffix = file_suffix(name, multi)
    ev = evaluate_results(gt, results, backend=backend)
    metrics: dict[str, Any] = {"stats": ev["stats"], "per_class_ap": ev["per_class_ap"], "num_detections": len(results)}
    (out / f"per_class_ap{suffix}.md").write_text(per_class_table(ev["per_class_ap"]) + "\n")
    pr = None
    if ev["precision"] is not None:
        pr = plot_pr_curves(ev["precision"], list(ev["per_class_ap"]), out / f"pr_curves{suffix}.png")
    analysis = None
    if cfg.get("analyze", False):
        opts = cfg.get("analysis") or {}
        analysis = analyze(gt, results, score_thresh=float(opts.get("score_thresh", 0.5)), calibration_bins=int(opts.get("calibration_bins", 10)))
        metrics["analysis"] = analysis.to_json()
    return ModelResult(name, source, metrics, pr, analysis)


def _read_results(cfg: DictConfig) -> tuple[list[tuple[str, str, list[dict[str, Any]]]], COCO]:
    """``(name, path, COCO results list)`` of each of ``cfg.predictions``, and the ground truth of ``cfg.annotations`` (no image is read)."""
    paths = [cfg.predictions] if isinstance(cfg.predictions, str) else list(cfg.predictions)
    return [(name, str(p), _read_results_file(str(p))) for name, p in zip(model_names(paths), paths)], load_coco(cfg.annotations)


def model_names(paths: list[str]) -> list[str]:
    """Short distinct names of results files: what their paths do not share (``[x/det.json, y/det.json]`` → ``[x, y]``)."""
    parts = [list(Path(p).with_suffix("").parts) for p in paths]
    if len(parts) == 1:
        return [parts[0][-1]]
    while all(len(q) > 1 for q in parts) and len({q[0] for q in parts}) == 1:
        parts = [q[1:] for q in parts]
    while all(len(q) > 1 for q in parts) and len({q[-1] for q in parts}) == 1:
        parts = [q[:-1] for q in parts]
    names = ["/".join(q) for q in parts]
    if len({file_suffix(n, True) for n in names}) < len(names):  # a_b and a/b would share their figures' files
        names = [f"{i + 1}:{n}" for i, n in enumerate(names)]
    return names


def _read_results_file(source: str) -> list[dict[str, Any]]:
    """The checked COCO results list of one predictions file."""
    path = Path(source)
    if not path.is_file():
        raise MissingFileError(f"predictions file {source} not found; pass predictions=/path/to/results.json")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"predictions file {source} is not valid JSON ({err}); pass a COCO results list") from err
    results, degenerate = check_results(results, source)
    if degenerate:
        print(f"left out {degenerate} detections of {source} with a zero or negative width or height")
    return results


def check_results(results: Any, source: str) -> tuple[list[dict[str, Any]], int]:
    """A COCO results list, checked before scoring: ``(the entries kept, how many were dropped)``.

    Refused with one line naming the entry's index and image id: a top level that is not a list, an entry
    that is not an object, a missing ``image_id`` / ``category_id`` / ``bbox`` / ``score``, an id that is
    not an integer, a ``bbox`` that is not four numbers, a score or coordinate that is not a finite number.
    Dropped with a count: boxes of zero or negative width or height (pycocotools would score them as
    misses at every threshold; a detector may emit them). Unknown image or category ids are refused when
    scored (:func:`frcnn.evaluation.coco_eval.evaluate_results`).
    """
    if not isinstance(results, list):
        raise InputError(f"predictions file {source} holds a JSON {type(results).__name__}, not a list of detections "
                         '[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...] (the COCO results format)')

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    kept, degenerate = [], 0
    for i, r in enumerate(results):
        where = f"predictions file {source}, entry {i}"
        if not isinstance(r, dict):
            raise InputError(f"{where} is a JSON {type(r).__name__}, not an object with image_id, category_id, bbox, score")
        where += f" (image_id {r.get('image_id')!r})"
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
        if missing:
            raise InputError(f"{where} lacks {', '.join(missing)}: each detection needs image_id, category_id, bbox [x, y, w, h] and score")
        for key in ("image_id", "category_id"):
            if not (number(r[key]) and float(r[key]).is_integer()):
                raise InputError(f"{where} has {key} {r[key]!r}: ids are integers, as in the annotation file")
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(number(v) for v in box)):
            raise InputError(f"{where} has bbox {box!r}: a bbox is four finite numbers [x, y, width, height] in pixels")
        if not number(r["score"]):
            raise InputError(f"{where} has score {r['score']!r}: a score is a finite number")
        if box[2] <= 0 or box[3] <= 0:
            degenerate += 1
            continue
        kept.append(r)
    return kept, degenerate


def _predict_split(cfg: DictConfig) -> tuple[list[dict[str, Any]], COCO, str]:
    """The checkpoint's COCO results on ``cfg.images`` / ``cfg.annotations`` (default: its validation split),
    that split's ground truth and its image folder."""
    device = resolve_device(cfg.device, "device")
    model, categories, train_cfg = load_model(cfg.checkpoint, device, proposal_overrides(cfg.get("proposals")))
    images = cfg.images or train_cfg.data.val.images
    # The checkpoint's own split in its own format (a VOC or YOLO split is converted with its class names).
    annotations = cfg.annotations or split_annotations(train_cfg, "val", categories)
    dataset = CocoDetection(images, annotations, category_map=categories, max_pixels=cfg.get("max_pixels", DEFAULT_MAX_PIXELS))
    print(f"{dataset.annotation_file}: {dataset.load_summary()}", flush=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), collate_fn=collate)
    results = predict(model, loader, categories, device, amp_dtype=amp_dtype(cfg.amp, "amp"), progress=bool(cfg.get("progress", True)))
    # A model may know categories the split lacks (an imported COCO model's 10 unused ids): not scored.
    known = set(dataset.coco.getCatIds())
    scored = [r for r in results if r["category_id"] in known]
    if len(scored) < len(results):
        extra = sorted({categories.name(categories.label(r["category_id"])) for r in results if r["category_id"] not in known})
        print(f"left out {len(results) - len(scored)} detections of categories the ground truth lacks: {', '.join(extra)}")
    return scored, dataset.coco, str(images)
