# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Train, evaluate, look
#
# A ResNet-18-C4 Faster R-CNN trained from scratch on a small synthetic set for about a CPU minute,
# through the same `train(cfg)` that `scripts/train.py` runs, with the demo's settings
# (`experiment=demo`; the run's overrides are `frcnn.recipes.QUICK`). That buys only a first, weak
# detector: `make demo` trains the same model for up to ten minutes on 800 images and reaches COCO AP ≈ 0.5
# (docs/benchmarks.md).
#
# The test suite trains this very run once per session and shares it with this notebook through
# `FRCNN_TRAINED_RUN`; opened by hand, the notebook trains it here.

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from frcnn.recipes import QUICK, QUICK_DATA, quick_run, shared_run

# quick_run composes conf/train.yaml (found from the package, wherever this notebook runs) with these
# overrides, generates the data and calls frcnn.tasks.train.train(cfg), as scripts/train.py does.
print("data:", QUICK_DATA)
print("overrides:", QUICK)
run = shared_run() or quick_run(Path(tempfile.mkdtemp()))
print("run directory:", run, sorted(p.name for p in run.iterdir()))
assert (run / "last.pt").is_file() and torch.load(run / "last.pt", weights_only=True)["iteration"] == 60

# %% [markdown]
# ## Loss curves (from the run's `metrics.jsonl`)

# %%
records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
steps = [r for r in records if "loss" in r]
fig, ax = plt.subplots(figsize=(8, 4))
for key in ("loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg"):
    ax.plot([r["iteration"] for r in steps], [r[key] for r in steps], label=key)
ax.set(xlabel="iteration", ylabel="loss", title="training losses")
ax.legend()
plt.show()
def mean(key, rows):
    return sum(r[key] for r in rows) / len(rows)

assert mean("loss_rpn_cls", steps[-3:]) < mean("loss_rpn_cls", steps[:3])
assert mean("loss_cls", steps[-3:]) < mean("loss_cls", steps[:3])

# %% [markdown]
# ## COCO metrics on the validation images

# %%
val = [r for r in records if "val/AP" in r][-1]
for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
    print(f"{k:6s} {val['val/' + k]:.4f}")
assert 0.0 <= val["val/AP"] <= val["val/AP50"] <= 1.0

# %% [markdown]
# ## Detections next to the ground truth, and failure cases
#
# Green: ground truth; red: detections with score ≥ 0.5. The images are ordered from best to worst
# recall at IoU 0.5, so the right-hand ones are failure cases: missed small objects, confused shapes.

# %%
from torchvision.ops import box_iou

from frcnn.data.coco import CocoDetection
from frcnn.tasks.load import load_model

model, categories, train_cfg = load_model(run / "last.pt", torch.device("cpu"))
data = CocoDetection(train_cfg.data.val.images, train_cfg.data.val.annotations, category_map=categories)
rows = []
with torch.no_grad():
    for i in range(len(data)):
        img, tgt = data[i]
        det = model([img]).detections[0]
        keep = det["scores"] >= 0.5
        hit = (box_iou(tgt["boxes"], det["boxes"][keep]).max(1).values >= 0.5).float().mean().item() if keep.any() else 0.0
        rows.append((hit, img, tgt, {k: v[keep] for k, v in det.items()}))
rows.sort(key=lambda r: -r[0])
picks = rows[:3] + rows[-3:]
fig, axes = plt.subplots(1, 6, figsize=(20, 3.6))
for ax, (recall, img, tgt, det) in zip(axes, picks):
    ax.imshow(img.permute(1, 2, 0))
    for b in tgt["boxes"].tolist():
        ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="lime", lw=1.5))
    for b, lab, s in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist()):
        ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="red", lw=1))
        ax.text(b[0], b[1], f"{categories.name(lab)} {s:.2f}", color="red", fontsize=7)
    ax.set(title=f"recall@0.5 = {recall:.2f}", xlabel="x (pixels)", ylabel="y (pixels)")
plt.show()
assert len(rows) == len(data)

# %% [markdown]
# ## Why the AP is what it is: the error analysis
#
# TIDE (Bolya et al., 2020) puts every false positive and every missed object into one error type and
# says how much AP50 an oracle fixing only that type would add (dAP); COCO's analyze breakdown reads the
# PR curve under ever more forgiving judges. `scripts/evaluate.py checkpoint=... analyze=true` writes this
# and more (confusion matrix, calibration, the worst images drawn) into one `report.html`.

# %%
from IPython.display import Image, display

from frcnn.data.coco import collate
from frcnn.evaluation.analysis import analyze
from frcnn.evaluation.coco_eval import evaluate_results, predict
from frcnn.evaluation.plots import plot_coco_analyze, plot_tide

loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=collate)
results = predict(model, loader, categories, torch.device("cpu"))
a = analyze(data.coco, results)
print(f"TIDE AP50 {a.tide.ap:.1f};", ", ".join(f"{e} {v:.1f}" for e, v in a.tide.dap.items()))
figures = Path(tempfile.mkdtemp())
display(Image(plot_tide({"quick run": a.to_json()["tide"]}, figures / "tide.png")))
display(Image(plot_coco_analyze(np.nanmean(a.curves, axis=1), a.curve_ap, "all classes", figures / "analyze.png")))
# The analysis's own matching gives COCOeval's AP50 exactly.
assert abs(a.curve_ap["C50"] - evaluate_results(data.coco, results)["stats"]["AP50"]) < 1e-9
