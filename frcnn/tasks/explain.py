"""The task behind ``scripts/explain.py``: explain an image's detections with several methods, score each
map's faithfulness, and write a panel per detection plus the maps and numbers (``conf/explain.yaml``).

Outputs in ``cfg.output_dir``:

* ``<stem>_<detection>.png`` — the image with the detection's box, then one heat map per method, each
  titled with its deletion / insertion AUC (lower / higher is better) on ``faithfulness.substrate``;
* ``explanations.npz`` — ``<detection>/<method>`` → ``[H, W]`` float32 map;
* ``explanations.json`` — per detection: box, class, score, and per method the target score, seconds,
  the two AUCs and the method's own facts (e.g. IG's rule and completeness error); ``grey_mean``, the
  grey substrate's colour and its source, where grey is used.

Grey is the mean colour of the checkpoint's training images (ROAR's fill), ImageNet's mean when they are
not on this machine (:func:`frcnn.explain.substrates.training_mean`, printed either way).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from frcnn.config import resolve_device  # noqa: E402
from frcnn.data.coco import CategoryMap, load_coco  # noqa: E402
from frcnn.data.images import DEFAULT_MAX_PIXELS, read_rgb  # noqa: E402
from frcnn.errors import ConfigError, InputError, MissingFileError  # noqa: E402
from frcnn.explain.api import Explanation, as_image_tensor, explain, method_name  # noqa: E402
from frcnn.explain.faithfulness import Curves, deletion_insertion  # noqa: E402
from frcnn.explain.methods import BATCHED, expected_passes  # noqa: E402
from frcnn.explain.substrates import GreyMean, training_mean
from frcnn.explain.target import ATTRIBUTES, Detection, DetectionScore, find_detections  # noqa: E402

SUBSTRATES = ("black", "grey", "blur", "noise")


def select(found: list[Detection], spec: Any) -> list[Detection]:
    """Pick detections by ``spec``: ``"topN"``, ``"all"``, an index or a list of indices into ``found``."""
    if isinstance(spec, str):
        if spec == "all":
            return found
        match = re.fullmatch(r"top(\d+)", spec)
        if match:
            return found[: int(match.group(1))]
        raise ConfigError(f"detections={spec!r}: use topN (e.g. top3), all, or a list of indices like [0,2]")
    indices = [spec] if isinstance(spec, int) else list(spec)
    bad = [i for i in indices if not isinstance(i, int) or not 0 <= i < len(found)]
    if bad:
        raise ConfigError(f"detections={indices}: index {bad[0]} is not one of the {len(found)} detections found (0..{len(found) - 1})")
    return [found[i] for i in indices]


def validate_explain_config(cfg: DictConfig) -> list[str]:
    """Check a composed ``conf/explain.yaml``; return the canonical method names."""
    missing = [key for key in ("checkpoint", "image") if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(f"give {missing[0]}=... (see conf/explain.yaml)")
    methods = [cfg.methods] if isinstance(cfg.methods, str) else list(cfg.methods)
    try:
        names = [method_name(m) for m in methods]
    except ValueError as err:
        raise ConfigError(f"methods: {err}") from None
    if cfg.faithfulness.substrate not in SUBSTRATES:
        raise ConfigError(f"faithfulness.substrate={cfg.faithfulness.substrate!r}: one of {', '.join(SUBSTRATES)}")
    if cfg.explain not in ("detections", "proposals"):
        raise ConfigError(f"explain={cfg.explain!r}: detections or proposals")
    if cfg.explain == "proposals" and "gradcam_head" in names:
        raise ConfigError("methods: gradcam_head explains the box head, which proposals never reach; "
                          "drop it for explain=proposals (gradcam reads the feature map the RPN sees)")
    if cfg.target not in ("similarity", "roi_score"):
        raise ConfigError(f"target={cfg.target!r}: similarity or roi_score")
    resolve_device(cfg.device, "device")
    attribute = ((cfg.get("options") or {}).get("odam") or {}).get("attribute", "logit")
    if "odam" in names and attribute != "score":
        if attribute not in ATTRIBUTES:
            raise ConfigError(f"options.odam.attribute={attribute!r} is not valid; allowed: {' | '.join(('score', *ATTRIBUTES))}")
        if cfg.get("explain") == "proposals" or cfg.get("target") == "roi_score":
            raise ConfigError(f"options.odam.attribute={attribute} follows a detection through its best-matching RoI: it needs "
                              "explain=detections and target=similarity (or options.odam.attribute=score)")
    return names


def run_explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain ``cfg.image``'s detections with ``cfg.methods``; write panels, NPZ and JSON; return the JSON."""
    from frcnn.tasks.load import load_model

    names = validate_explain_config(cfg)
    device = resolve_device(cfg.device, "device")
    model, categories, train_cfg = load_model(cfg.checkpoint, device)
    path = Path(cfg.image)
    if not path.is_file():
        raise MissingFileError(f"image {path} not found")
    image = as_image_tensor(read_rgb(path, max_pixels=cfg.get("max_pixels", DEFAULT_MAX_PIXELS)), device)
    kind = "proposal" if cfg.explain == "proposals" else "detection"
    found = find_detections(model, image, top=None, score_thresh=float(cfg.score_thresh), kind=kind)
    chosen = select(found, cfg.detections)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = ground_truth(cfg.get("annotations"), path)
    report: dict[str, Any] = {"image": str(path), "checkpoint": str(cfg.checkpoint), "target": cfg.target, "detections": []}
    if truth is not None:
        report["ground_truth"] = [{"category": name, "box_xyxy": box} for name, box in truth]
    if not chosen:
        print(f"{path}: no {cfg.explain} scoring >= {cfg.score_thresh}; lower score_thresh=... to explain weaker ones")
        (out / "explanations.json").write_text(json.dumps(report, indent=1))
        return report
    options = {name: dict(cfg.options.get(name) or {}) for name in names}
    common = {"target": cfg.target, "objectness": bool(cfg.objectness), "max_rois": cfg.max_rois}
    score = DetectionScore(model, chosen, **common).to(device)
    print(cost_line(path, chosen, kind, names, options, pass_seconds(score, image)))
    grey = grey_fill(cfg.faithfulness.substrate, options, train_cfg)
    mean = None if grey is None else grey.tensor()
    if grey is not None:
        report["grey_mean"] = grey.record()
    per_method: dict[str, list[Explanation]] = {}
    curves: dict[str, list[Curves]] = {}
    for name in names:
        per_method[name] = explain(model, image, chosen, method=name, **common, **options[name])
        curves[name] = [
            deletion_insertion(
                lambda x, m=m: score(x)[:, m], image, e.saliency, substrate=cfg.faithfulness.substrate,
                steps=int(cfg.faithfulness.steps), seed=int(cfg.seed), mean=mean,
            )
            for m, e in enumerate(per_method[name])
        ]
        print(f"{name}: {per_method[name][0].seconds:.2f} s per {kind}")
    _write_results(report, image, chosen, categories, per_method, curves, out, path.stem, truth=truth,
                   substrate=cfg.faithfulness.substrate)
    print(f"{path}: {len(chosen)} {cfg.explain} explained with {', '.join(names)} -> {out}")
    return report


def _write_results(report: dict[str, Any], image: torch.Tensor, chosen: list, categories: Any,
                   per_method: dict[str, list[Explanation]], curves: dict[str, list[Curves]], out: Path, stem: str, *,
                   truth: Any, substrate: str) -> None:
    """One panel per detection, ``explanations.npz`` and ``explanations.json`` (``report`` gets each detection's
    entry: its record and, per method, the target score, seconds, the AUCs and the method's own facts)."""
    names = list(per_method)
    maps = {}
    for m, det in enumerate(chosen):
        entry = _detection_record(det, categories)
        entry["methods"] = {}
        for name in names:
            e, c = per_method[name][m], curves[name][m]
            maps[f"{det.name}/{name}"] = e.saliency.numpy().astype(np.float32)
            entry["methods"][name] = {
                "target_score": round(e.score, 4), "seconds": round(e.seconds, 3),
                "deletion_auc": round(c.deletion_auc, 4), "insertion_auc": round(c.insertion_auc, 4), **e.info,
            }
        entry["panel"] = str(draw_panel(image, det, [per_method[n][m] for n in names], [curves[n][m] for n in names],
                                        out / f"{stem}_{det.name}.png", title=entry["category"],
                                        substrate=substrate, truth=truth))
        report["detections"].append(entry)
    np.savez_compressed(out / "explanations.npz", **maps)
    (out / "explanations.json").write_text(json.dumps(report, indent=1))


def grey_fill(substrate: str, options: dict[str, dict[str, Any]], train_cfg: DictConfig) -> GreyMean | None:
    """The grey substrate's colour if the run uses grey (as the faithfulness substrate or a method's
    ``baseline`` / ``fill``), else None; each method filling with grey gets it as its ``mean`` option."""
    users = [o for o in options.values() if "grey" in (o.get("baseline"), o.get("fill"))]
    if substrate != "grey" and not users:
        return None
    grey = training_mean(train_cfg)
    print(f"grey substrate: RGB {', '.join(f'{v:.3f}' for v in grey.rgb)}, {grey.source}")
    for o in users:
        o["mean"] = grey.tensor()
    return grey


def _detection_record(det: Detection, categories: CategoryMap) -> dict[str, Any]:
    record = {"name": det.name, "kind": det.kind, "box_xyxy": [round(float(v), 2) for v in det.box], "score": round(det.score, 4)}
    if det.kind == "detection":
        record.update(label=det.label, category_id=categories.category_id(det.label), category=categories.name(det.label))
    else:
        record.update(category="proposal")
    return record


@torch.no_grad()
def pass_seconds(score: DetectionScore, image: torch.Tensor) -> tuple[float, float]:
    """Seconds of one forward pass of the explained target: alone, and per image in a batch of 4 (the methods
    that batch their samples: Integrated Gradients, SmoothGrad, VarGrad, D-RISE, KernelSHAP). Measured warm."""
    def timed(batch: torch.Tensor) -> float:
        start = time.perf_counter()
        score(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()  # the kernels, not their launches
        return time.perf_counter() - start

    timed(image[None])  # warm-up
    return timed(image[None]), timed(image[None].expand(4, -1, -1, -1)) / 4


def cost_line(path: Path, chosen: list[Detection], kind: str, names: list[str], options: dict[str, dict[str, Any]],
              seconds: tuple[float, float]) -> str:
    """The run's first line: each method's expected time here, its forward passes
    (:func:`frcnn.explain.methods.expected_passes`) times :func:`pass_seconds`."""
    costs = ", ".join(f"{name} ≈ {_duration(seconds[name in BATCHED] * expected_passes(name, options[name], len(chosen)))}"
                      for name in names)
    return (f"{path}: explaining {len(chosen)} {kind}{'s' if len(chosen) != 1 else ''}; one forward pass takes "
            f"{seconds[0]:.3f} s here ({seconds[1]:.3f} s per image in a batch), so expect about: {costs}")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def ground_truth(annotations: str | None, image: Path) -> list[tuple[str, list[float]]] | None:
    """``(category name, [x1, y1, x2, y2])`` of every object of ``image`` in a COCO annotation file, found by the
    image's file name; None without ``annotations``.

    Raises:
        InputError: the file has no image of that name.
    """
    if not annotations:
        return None
    coco = load_coco(annotations)
    entries = [im for im in coco.dataset["images"] if Path(im["file_name"]).name == image.name]
    if len(entries) > 1:  # the same name in several folders: the entry whose path the image's path ends with
        parts = Path(image).resolve().parts
        entries = [im for im in entries if parts[-len(Path(im["file_name"]).parts):] == Path(im["file_name"]).parts]
        if len(entries) != 1:
            names = ", ".join(im["file_name"] for im in coco.dataset["images"] if Path(im["file_name"]).name == image.name)
            raise InputError(f"annotations {annotations} have several images named {image.name} ({names}) and {image} "
                             "ends with none or several of them; pass the image by the path its entry names")
    if not entries:
        raise InputError(f"annotations {annotations} have no image named {image.name} (matched by file name); "
                         "pass the annotation file of the image's split, or drop annotations=")
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    anns = coco.imgToAnns.get(entries[0]["id"], [])
    return [(names[a["category_id"]], [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]])
            for a in anns]


def draw_panel(
    image: torch.Tensor, det: Detection, explanations: list[Explanation], curves: list[Curves], path: Path, *, title: str = "",
    substrate: str = "blur", truth: list[tuple[str, list[float]]] | None = None,
) -> Path:
    """One row: the image with the detection's box (red) and the ground truth (green, dashed, when known), then each
    method's map over the image with a colour bar, titled with its deletion / insertion AUC; a line below says
    what those numbers mean."""
    rgb = image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    grey = rgb.mean(axis=2)
    columns = 1 + len(explanations)
    fig, axes = plt.subplots(1, columns, figsize=(3.6 * columns, 3.4), squeeze=False)
    x1, y1, x2, y2 = det.box.tolist()
    for ax in axes[0]:
        for _, (g1, h1, g2, h2) in truth or []:
            ax.add_patch(plt.Rectangle((g1, h1), g2 - g1, h2 - h1, fill=False, edgecolor="lime", linewidth=1.2, linestyle="--"))
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=1.5))
        ax.set_axis_off()
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title(f"{title} {det.score:.2f}" + ("\n(ground truth: green, dashed)" if truth else ""), fontsize=9)
    for ax, e, c in zip(axes[0, 1:], explanations, curves):
        ax.imshow(grey, cmap="gray")
        shown = ax.imshow(e.saliency.numpy(), cmap="jet", alpha=0.5)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, format="%.2g").ax.tick_params(labelsize=6)
        ax.set_title(f"{e.method}\ndel {c.deletion_auc:.3f} ↓   ins {c.insertion_auc:.3f} ↑", fontsize=8)
    fig.text(0.5, 0.01, f"del: area under the detection's score as its most important pixels are replaced by the {substrate} "
             f"substrate, most important first: lower = more faithful.  ins: the same, putting them back into the {substrate} "
             "substrate: higher = more faithful.  Colour: the method's relevance, in its own units.",
             ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
