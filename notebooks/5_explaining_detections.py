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
# # 5. Explaining detections
#
# Why did the detector put *this* box *here*? This notebook explains detections of a trained frcnn model
# with every method in `frcnn.explain`, then checks whether the maps are faithful: deletion / insertion
# curves, the sanity check against a randomized model, and the ROAR table measured in
# `docs/explanations.md`.
#
# The model is the small run of notebook 3 (the test suite shares it; opened by hand, it is trained here
# in about a CPU minute). It is a weak detector, so its maps are noisy; point `CHECKPOINT` at the model
# `make demo` trains (`../outputs/demo/best.pt`) for sharper ones.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle

import frcnn
from frcnn.data.images import read_rgb, to_chw
from frcnn.explain import METHODS, DetectionScore, explain, find_detections
from frcnn.explain.faithfulness import deletion_insertion, sanity_check
from frcnn.recipes import quick_run, shared_run
from frcnn.tasks.load import load_model

CHECKPOINT = None  # e.g. "../outputs/demo/best.pt"
checkpoint = Path(CHECKPOINT) if CHECKPOINT else (shared_run() or quick_run(Path(tempfile.mkdtemp()))) / "last.pt"
model, categories, cfg = load_model(checkpoint, torch.device("cpu"))

# The validation image whose best detection scores highest, among the first three.
candidates = []
for path in sorted(Path(cfg.data.val.images).glob("*.png"))[:3]:
    image = to_chw(read_rgb(path)).float() / 255
    with torch.no_grad():
        best = model([image]).detections[0]["scores"][:1].tolist()
    candidates.append((best[0] if best else 0.0, path, image))
score_best, path, image = max(candidates, key=lambda c: c[0])
detections = find_detections(model, image, top=1, score_thresh=0.0)
print(path.name, [(categories.name(d.label), round(d.score, 3), [round(v) for v in d.box.tolist()]) for d in detections])

# %% [markdown]
# ## The target: one detection, followed through every RoI
#
# NMS may keep another RoI once the input is perturbed, so the score of detection `d` on an image `x` is
# D-RISE's similarity, maximised over all RoIs before NMS:
# `s(d; x) = max_r IoU(box_d, box_r[c_d]) · cos(e_c, p_r)`, with `e_c` the one-hot vector of `d`'s class
# over the K+1 classes, so the class term is `p_r[c] / ||p_r||` and falls as an RoI turns background-like.
# On the image `d` came from, its own RoI reproduces the box (IoU 1) and scores `p_d[c] / ||p_d||`.
# On noisy copies it degrades smoothly, where the final detection list may simply lose it.

# %%
score = DetectionScore(model, detections, max_rois=4)  # the 4 RoIs nearest the detection (see below)
with torch.no_grad():
    print("s(d) on the image itself:", score(image[None])[0].tolist())
    generator = torch.Generator().manual_seed(0)
    for sigma in (0.05, 0.1, 0.2, 0.4):
        noisy = (image + sigma * torch.randn(image.shape, generator=generator)).clamp(0, 1)
        print(f"noise sigma {sigma}: s(d) = {[round(v, 3) for v in score(noisy[None])[0].tolist()]}")
    own = torch.stack([d.probs[d.label] / d.probs.norm() for d in detections])
    assert torch.allclose(score(image[None])[0], own, atol=1e-4)

# %% [markdown]
# ## Every method on the same detections
#
# White-box: vanilla gradient, guided backpropagation, Grad-CAM on the trunk's feature map and on the RoI
# box head, guided Grad-CAM, Integrated Gradients, SmoothGrad, VarGrad. Black-box: D-RISE (random masks,
# scored in batches) and KernelSHAP over image patches. Sample counts are cut here to keep the notebook under
# a minute (IG: 6 steps; SmoothGrad, VarGrad: 6 samples; D-RISE: 32 masks on an 8x8 grid, one batch; KernelSHAP: 12 patches of 64 px,
# 16 coalitions);
# `scripts/explain.py` uses the full ones (`conf/explain.yaml`). The detection is followed
# through the 4 RoIs nearest it (`max_rois=4`): the box head runs once per RoI and is most of the cost.

# %%
quick = {"integrated_gradients": {"steps": 6}, "smoothgrad": {"samples": 6}, "vargrad": {"samples": 6},
         "drise": {"masks": 32, "grid": 8, "batch_size": 32}, "kernel_shap": {"samples": 16, "patch": 64}}
results = {}
for name in METHODS:
    results[name] = explain(model, image, detections, method=name, max_rois=4, **quick.get(name, {}))
    print(f"{name:22s} {results[name][0].seconds:6.2f} s per detection", results[name][0].info or "")

d = detections[0]
fig, axes = plt.subplots(2, 6, figsize=(20, 6.5))
axes = axes.ravel()
axes[0].imshow(image.permute(1, 2, 0))
axes[0].set_title(f"{categories.name(d.label)} {d.score:.2f}")
for ax, (name, explanations) in zip(axes[1:], results.items()):
    ax.imshow(image.mean(0), cmap="gray")
    ax.imshow(explanations[0].saliency, cmap="jet", alpha=0.5)
    ax.set_title(name)
for ax in axes:
    x1, y1, x2, y2 = d.box.tolist()
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white", lw=1.5))
    ax.set_axis_off()
plt.show()
ig = results["integrated_gradients"][0].info
print(f"IG completeness: sum of attributions - (s(x) - s(black)) = {ig['completeness_error']:.4f} "
      f"({100 * ig['completeness_relative']:.0f} % of the gap, 6 steps; the score jumps where another RoI or proposal takes over)")
assert all(torch.isfinite(e.saliency).all() for es in results.values() for e in es)

# %% [markdown]
# ## Deletion and insertion
#
# Delete the pixels in the order a map ranks them (replacing them with a blurred copy) and watch `s(d)`:
# a faithful map makes it fall fast (small deletion AUC). Insert them into the blurred image and it
# should rise fast (large insertion AUC). A random ranking is the reference.

# %%
column = lambda x: score(x)[:, 0]
curves = {name: deletion_insertion(column, image, results[name][0].saliency, substrate="blur", steps=6)
          for name in ("gradcam", "integrated_gradients", "drise")}
curves["random"] = deletion_insertion(column, image, torch.rand(image.shape[-2:], generator=torch.Generator().manual_seed(0)),
                                      substrate="blur", steps=6)
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
for name, c in curves.items():
    a.plot(c.fractions, c.deletion, label=f"{name} ({c.deletion_auc:.3f})")
    b.plot(c.fractions, c.insertion, label=f"{name} ({c.insertion_auc:.3f})")
a.set(title="deletion (lower AUC is better)", xlabel="share of pixels removed", ylabel="s(d)")
b.set(title="insertion (higher AUC is better)", xlabel="share of pixels inserted")
a.legend(fontsize=8); b.legend(fontsize=8)
plt.show()
assert all(0 <= c.deletion_auc <= 1 and 0 <= c.insertion_auc <= 1 for c in curves.values())

# %% [markdown]
# The substrate is a choice with consequences: a black fill draws new edges, which a detector may
# respond to by itself. The same map, four substrates:

# %%
for substrate in ("black", "grey", "blur", "noise"):
    row = {name: deletion_insertion(column, image, results[name][0].saliency, substrate=substrate, steps=4)
           for name in ("gradcam", "drise")}
    print(f"{substrate:6s}", "  ".join(f"{n}: del {c.deletion_auc:.3f} ins {c.insertion_auc:.3f}" for n, c in row.items()))


# %% [markdown]
# ## Sanity check: does the map depend on the weights?
#
# Adebayo et al. (2018): re-initialize the layers from the predictor down to the stem, one stage more at a
# time, and compare each map with the trained model's (Spearman rank correlation of the magnitudes). A
# method that explains the model must change; an edge detector, which ignores the model, does not.

# %%
def gradient_map(m):
    return explain(m, image, d, method="gradient", max_rois=4).saliency

def gradcam_map(m):
    return explain(m, image, d, method="gradcam", max_rois=4).saliency

edges = (image[:, 1:, 1:] - image[:, :-1, :-1]).abs().sum(0)
checks = {"gradient": sanity_check(gradient_map, model), "gradcam": sanity_check(gradcam_map, model),
          "edge detector": sanity_check(lambda m: edges, model)}
fig, ax = plt.subplots(figsize=(8, 3.5))
for name, check in checks.items():
    ax.plot(range(len(check.stages)), check.correlations, marker="o", label=f"{name}{' (flagged)' if check.flagged else ''}")
ax.set_xticks(range(len(check.stages)), [s.split(".")[-1] for s in check.stages], rotation=30)
ax.set(ylabel="Spearman rho with the trained map", xlabel="randomized down to", ylim=(-0.2, 1.05))
ax.legend()
plt.show()
assert checks["edge detector"].flagged

# %% [markdown]
# ## RemOve And Retrain
#
# Deletion curves change the images the model sees at test time only, so a fall in score mixes "the map
# found the evidence" with "the image left the training distribution". ROAR (Hooker et al. 2019) retrains:
# remove the top k % of every training and validation image, train the same model from scratch, and
# compare the AP. `scripts/roar.py` runs it; the table it measured is in `docs/explanations.md`:

# %%
docs = Path(frcnn.__file__).resolve().parents[1] / "docs" / "explanations.md"
text = docs.read_text() if docs.is_file() else ""
section = text.split("## RemOve And Retrain", 1)[-1].split("\n## ", 1)[0] if "## RemOve And Retrain" in text else "(docs/explanations.md not found)"
print(section.strip())
