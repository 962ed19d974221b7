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
# # 2. RoI sampling and the box head
#
# The second stage on one synthetic image, with the project's `frcnn.modeling.roi_heads.RoIHeads`: the 128-RoI
# sample (at most 32 foreground, IoU ≥ 0.5; background IoU in [0.1, 0.5)), the IoU distributions, what
# RoIAlign and RoI max pooling produce for one box, and class-specific regression targets.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from torchvision.ops import roi_align, roi_pool

from frcnn.data.synthetic import CLASSES, make_image
from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.box_ops import batched_pairwise_iou
from frcnn.modeling.roi_heads import BoxPredictor, RoIHeads
from frcnn.modeling.structures import Proposals, Targets

rng = np.random.default_rng(7)
image, objects = make_image(rng, 192, 256, max_objects=5, min_size=20, max_size=120, max_occlusion=0.35)
gt = torch.tensor([o[1:] for o in objects])
gt_labels = torch.tensor([o[0] + 1 for o in objects])  # labels 1..K; 0 is background
H, W = 192, 256

# Stand-in proposals: jittered copies of the ground truth (as a trained RPN gives) and random boxes.
g = torch.Generator().manual_seed(0)
jitter = gt.repeat(40, 1) + torch.randn(40 * len(gt), 4, generator=g) * 0.25 * (gt[:, 2:] - gt[:, :2]).repeat(40, 2)
xy = torch.rand(600, 2, generator=g) * torch.tensor([W, H])
wh = torch.rand(600, 2, generator=g) * 100 + 16
boxes = torch.cat([jitter, torch.cat([xy, xy + wh], 1)]).clamp(min=0)
boxes = torch.minimum(boxes, torch.tensor([W, H, W, H], dtype=torch.float32))
boxes = boxes[(boxes[:, 2] - boxes[:, 0] > 4) & (boxes[:, 3] - boxes[:, 1] > 4)]
proposals = Proposals(boxes=boxes[None], scores=torch.ones(1, len(boxes)), valid=torch.ones(1, len(boxes), dtype=torch.bool))
targets = Targets(boxes=gt[None], labels=gt_labels[None], valid=torch.ones(1, len(gt), dtype=torch.bool))
print(len(boxes), "proposals,", len(gt), "ground-truth boxes:", [CLASSES[o[0]] for o in objects])

# %% [markdown]
# ## The 128-RoI sample
#
# Ground-truth boxes are appended to the proposals first (py-faster-rcnn), so every image has foreground.

# %%
heads = RoIHeads(predictor=BoxPredictor(in_channels=16, num_classes=len(CLASSES)), pooler_resolution=7)
torch.manual_seed(0)
sample = heads.sample_rois(proposals, targets)
fg = sample.labels[0] > 0
iou_all = batched_pairwise_iou(torch.cat([boxes, gt])[None], gt[None])[0].max(1).values
iou_sample = batched_pairwise_iou(sample.boxes, gt[None])[0].max(1).values
print(f"sample: {int(fg.sum())} foreground + {int((~fg).sum())} background = {fg.numel()}")
assert fg.numel() == 128 and int(fg.sum()) <= 32
assert (iou_sample[fg] >= 0.5).all() and ((iou_sample[~fg] >= 0.1) & (iou_sample[~fg] < 0.5)).all()

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
axes[0].hist([iou_all.numpy(), iou_sample.numpy()], bins=20, range=(0, 1), label=["all candidates", "the 128 sampled"], density=True)
for t in (0.1, 0.5):
    axes[0].axvline(t, color="k", ls="--", lw=1)
axes[0].set(xlabel="max IoU with ground truth", ylabel="density", title="IoU of candidates and of the sample")
axes[0].legend()
axes[1].imshow(image)
for b, f in zip(sample.boxes[0].tolist(), fg.tolist()):
    axes[1].add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="lime" if f else "red", lw=0.8 if f else 0.4))
axes[1].set(title="sampled RoIs: foreground (green), background (red)", xlabel="x (pixels)", ylabel="y (pixels)")
plt.show()

# %% [markdown]
# ## Class-specific regression targets
#
# Each foreground RoI gets deltas to its matched ground truth, normalized by (0.1, 0.1, 0.2, 0.2); only
# the deltas of the ground-truth class are trained. Decoding the targets gives the ground truth back.

# %%
t = sample.regression_targets[0][fg]
decoded = decode_boxes(t, sample.boxes[0][fg], (10.0, 10.0, 5.0, 5.0))
matched = gt[batched_pairwise_iou(sample.boxes[0][fg][None], gt[None])[0].argmax(1)]
assert torch.allclose(decoded, matched, atol=1e-3)
assert (sample.regression_targets[0][~fg] == 0).all()
print("target deltas (first 5 foreground RoIs):")
print(t[:5].numpy().round(3))
print("std of the targets per coordinate:", t.std(0).numpy().round(3), "(normalized: order 1)")

# %% [markdown]
# ## RoIAlign vs RoI max pooling for one box
#
# RoI pooling (Fast R-CNN) snaps the box to the feature grid and max-pools integer bins; RoIAlign samples
# the feature map bilinearly at exact positions. On a smooth feature map the difference shows as blockiness.

# %%
yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
feature = torch.sin(xx / 2.5) + torch.cos(yy / 3.0)  # a smooth [12, 16] map (stride 16 over 192x256)
box = torch.tensor([[0.0, 37.0, 29.0, 141.0, 118.0]])  # (image index, x1, y1, x2, y2) in pixels
aligned = roi_align(feature[None, None], box, (7, 7), 1 / 16, sampling_ratio=2, aligned=True)[0, 0]
pooled = roi_pool(feature[None, None], box, (7, 7), 1 / 16)[0, 0]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
axes[0].imshow(feature, cmap="viridis")
x1, y1, x2, y2 = (box[0, 1:] / 16).tolist()
axes[0].add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="white", lw=2))
axes[0].set(title="feature map and the RoI", xlabel="feature x", ylabel="feature y")
for ax, out, name in ((axes[1], aligned, "RoIAlign 7x7"), (axes[2], pooled, "RoI max pooling 7x7")):
    im = ax.imshow(out, cmap="viridis", vmin=float(feature.min()), vmax=float(feature.max()))
    ax.set(title=name, xlabel="bin x", ylabel="bin y")
plt.colorbar(im, ax=axes[2])
plt.show()
assert aligned.shape == pooled.shape == (7, 7)

# On a linear map bilinear sampling is exact, so RoIAlign returns the map's value at each bin centre
# (aligned=True: feature coordinate = pixel / 16 - 0.5), while RoI pooling returns values of actual cells.
linear = 0.3 * xx + 0.2 * yy
a_lin = roi_align(linear[None, None], box, (7, 7), 1 / 16, sampling_ratio=2, aligned=True)[0, 0]
bx1, by1, bx2, by2 = (box[0, 1:] / 16 - 0.5).tolist()
cx = bx1 + (torch.arange(7) + 0.5) * (bx2 - bx1) / 7
cy = by1 + (torch.arange(7) + 0.5) * (by2 - by1) / 7
assert torch.allclose(a_lin, 0.3 * cx[None, :] + 0.2 * cy[:, None], atol=1e-5)
p_lin = roi_pool(linear[None, None], box, (7, 7), 1 / 16)[0, 0]
assert torch.isin(p_lin, linear).all()
