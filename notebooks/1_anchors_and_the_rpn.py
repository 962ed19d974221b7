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
# # 1. Anchors and the RPN, step by step
#
# Everything here runs the project's own modules (`frcnn.modeling.anchors`, `frcnn.modeling.matching`, `frcnn.modeling.sampling`,
# `frcnn.modeling.proposals`) on one image of the built-in synthetic data set, at the demo's scale (192x256 pixels,
# anchors of 32/64/128 px at stride 16). Each step ends with an `assert`.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from frcnn.data.synthetic import CLASSES, make_image
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.box_ops import batched_pairwise_iou
from frcnn.modeling.matching import BACKGROUND, FOREGROUND, IGNORE, match
from frcnn.modeling.sampling import sample_mask

rng = np.random.default_rng(7)
image, objects = make_image(rng, 192, 256, max_objects=5, min_size=20, max_size=120, max_occlusion=0.35)
gt = torch.tensor([o[1:] for o in objects])
H, W = 192, 256

def show(ax, title):
    ax.imshow(image)
    for x1, y1, x2, y2 in gt.tolist():
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white", lw=2))
    ax.set(title=title, xlabel="x (pixels)", ylabel="y (pixels)")
print(len(objects), "objects:", [CLASSES[o[0]] for o in objects])

# %% [markdown]
# ## The 9 anchors of one location
#
# 3 sizes x 3 aspect ratios (h/w = 0.5, 1, 2), each of area size², centred at the middle of a stride-16 cell.

# %%
gen = AnchorGenerator(sizes=[32, 64, 128], aspect_ratios=[0.5, 1.0, 2.0], stride=16, offset=0.5)
Hf, Wf = H // 16, W // 16
anchors = gen(Hf, Wf)  # [Hf*Wf*9, 4], ordered (y, x, a)
cell = (5, 7)
first = (cell[0] * Wf + cell[1]) * 9
nine = anchors[first:first + 9]
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
show(axes[0], f"the 9 anchors at feature cell {cell}")
for (x1, y1, x2, y2), c in zip(nine.tolist(), ["C0"] * 3 + ["C1"] * 3 + ["C2"] * 3):
    axes[0].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=c, lw=1.5))
centres = (anchors[::9, :2] + anchors[::9, 2:]) / 2
show(axes[1], f"anchor centres: {Hf} x {Wf} cells, {len(anchors)} anchors")
axes[1].scatter(centres[:, 0], centres[:, 1], s=6, c="yellow")
plt.show()
areas = (nine[:, 2] - nine[:, 0]) * (nine[:, 3] - nine[:, 1])
assert torch.allclose(areas, torch.tensor([32.0, 32, 32, 64, 64, 64, 128, 128, 128]) ** 2)
assert torch.allclose((nine[:, :2] + nine[:, 2:]).mean(0) / 2, torch.tensor([(cell[1] + 0.5) * 16, (cell[0] + 0.5) * 16]))

# %% [markdown]
# ## IoU labelling
#
# Positive at IoU ≥ 0.7, plus every ground truth's best anchor(s); negative below 0.3; in between ignored;
# anchors crossing the image border are ignored in training (straddle threshold 0).

# %%
inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= W) & (anchors[:, 3] <= H)
iou = batched_pairwise_iou(anchors[None], gt[None])
m = match(iou, box_valid=inside[None], gt_valid=torch.ones(1, len(gt), dtype=torch.bool),
          fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3, bg_iou_thresh_lo=0.0, allow_low_quality_matches=True)
labels, max_iou = m.labels[0], m.max_iou[0]
by_rule = (labels == FOREGROUND) & (max_iou < 0.7)
counts = {
    "positive (IoU >= 0.7)": int(((labels == FOREGROUND) & (max_iou >= 0.7)).sum()),
    "positive (best anchor of a ground truth, IoU < 0.7)": int(by_rule.sum()),
    "negative (IoU < 0.3)": int((labels == BACKGROUND).sum()),
    "ignored (0.3 <= IoU < 0.7)": int(((labels == IGNORE) & inside).sum()),
    "ignored (crossing the border)": int((~inside).sum()),
}
for k, v in counts.items():
    print(f"{v:5d}  {k}")
fig, ax = plt.subplots(figsize=(6, 4.5))
show(ax, "positive anchors (green: IoU >= 0.7, orange: best-anchor rule)")
for box, rule in zip(anchors[labels == FOREGROUND].tolist(), by_rule[labels == FOREGROUND].tolist()):
    ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="orange" if rule else "lime", lw=1))
plt.show()
assert sum(counts.values()) == len(anchors)
best = iou[0].masked_fill(~inside[:, None], -1).max(0).values
assert all((labels[(iou[0][:, g] == best[g]) & inside] == FOREGROUND).all() for g in range(len(gt)))  # every gt has its positive

# %% [markdown]
# ## The 256-anchor minibatch
#
# At most 128 positives, the rest negatives, drawn at random.

# %%
pos, neg = sample_mask((labels == FOREGROUND)[None], (labels == BACKGROUND)[None], num_samples=256, positive_fraction=0.5,
                       generator=torch.Generator().manual_seed(0))
print(f"sampled: {int(pos.sum())} positive + {int(neg.sum())} negative = {int((pos | neg).sum())}")
assert int((pos | neg).sum()) == 256 and int(pos.sum()) <= 128
assert int(pos.sum()) == min(128, int((labels == FOREGROUND).sum()))

# %% [markdown]
# ## From anchors to proposals
#
# An untrained RPN would score anchors at random, so this illustration uses an *oracle* objectness (the
# anchor's IoU with the ground truth, plus noise) and small random deltas, then follows the proposal layer
# stage by stage with `torchvision.ops`, counting boxes, and checks the result equals the batched
# `frcnn.modeling.proposals.generate_proposals`. (In the paper's setting, 600x1000 images have ~20000 anchors, so
# top-6000 and top-2000 bite; here there are fewer anchors than 6000.)

# %%
from torchvision.ops import clip_boxes_to_image, nms, remove_small_boxes

from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.proposals import generate_proposals

g = torch.Generator().manual_seed(1)
objectness = torch.logit(max_iou.clamp(0.01, 0.99)) + 0.5 * torch.randn(len(anchors), generator=g)
deltas = 0.1 * torch.randn(len(anchors), 4, generator=g)
min_size = 8.0  # the demo's value (16 px at the paper's 3x larger scale)

stages = {}
boxes = decode_boxes(deltas, anchors, (1.0, 1.0, 1.0, 1.0)); stages["decoded"] = boxes
clipped = clip_boxes_to_image(boxes, (H, W)); stages["clipped to the image"] = clipped
keep = remove_small_boxes(clipped, min_size); stages[f"sides >= {min_size:g} px"] = clipped[keep]
scores = objectness[keep]
order = scores.argsort(descending=True)[:6000]; stages["top 6000 by objectness"] = clipped[keep][order]
after_nms = nms(clipped[keep][order], scores[order], 0.7); stages["after NMS 0.7"] = clipped[keep][order][after_nms]
final = stages["after NMS 0.7"][:2000]; stages["top 2000"] = final
for name, b in stages.items():
    print(f"{len(b):6d}  {name}")

ours = generate_proposals(anchors, objectness[None], deltas[None], torch.tensor([[H, W]]), torch.tensor([min_size]),
                          pre_nms_topk=6000, nms_thresh=0.7, post_nms_topk=2000)
assert torch.equal(ours.boxes[0][ours.valid[0]], final)

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
outside = ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > W) | (boxes[:, 3] > H))
show(axes[0], f"before clipping: {int(outside.sum())} of {len(boxes)} boxes leave the image")
for b in boxes[outside][:: max(1, int(outside.sum()) // 40)].tolist():
    axes[0].add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="red", lw=0.7))
axes[0].set(xlim=(-80, W + 80), ylim=(H + 80, -80))
show(axes[1], "the 20 best proposals after NMS")
for b in final[:20].tolist():
    axes[1].add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="cyan", lw=1))
plt.show()
counts = [len(b) for b in stages.values()]
assert counts == sorted(counts, reverse=True)  # every stage only removes boxes

# %% [markdown]
# ## The same RPN as a tracker: SiamRPN
#
# SiamRPN (Li et al., CVPR 2018) keeps the RPN's anchors, matcher, sampler and box coder and changes where
# the head's weights come from: a Siamese backbone embeds a 127x127 **template** crop of the target and a
# 255x255 **search** crop of the next frame, and the template's features *are* the kernels the search
# features are correlated with. `frcnn.tracking` builds it from the modules above. Its anchors: one size
# (64 px = 8 x the stride) and 5 ratios (0.33, 0.5, 1, 2, 3) at every cell of the 17x17 response map, the
# centre cell on the search crop's centre.

# %%
import tempfile

from frcnn.tracking.model import AlexNet, SiamRPN, UpChannelHead

tracker_net = SiamRPN(backbone=AlexNet(), head=UpChannelHead(in_channels=256),  # the paper's widths
                      anchor_generator=AnchorGenerator(sizes=(64,), aspect_ratios=(0.33, 0.5, 1.0, 2.0, 3.0), stride=8))
grid = tracker_net.anchors.view(17, 17, 5, 4)
centres = (grid[..., :2] + grid[..., 2:]) / 2
print("anchors:", tuple(tracker_net.anchors.shape), "= 17 x 17 cells x 5 ratios; centre cell at", centres[8, 8, 0].tolist())
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(centres[..., 0, 0].flatten(), centres[..., 0, 1].flatten(), s=4)
for x1, y1, x2, y2 in grid[8, 8].tolist():
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=1))
ax.add_patch(Rectangle((0, 0), 255, 255, fill=False, color="black"))
ax.set(xlim=(-5, 260), ylim=(260, -5), title="17x17 anchor centres on the 255-px search crop; the 5 centre anchors")
plt.show()
assert torch.allclose(centres[8, 8], torch.full((5, 2), 127.5)) and torch.allclose(centres[0, 0, 0], torch.tensor([63.5, 63.5]))

# %% [markdown]
# ## A template/search pair and its response map
#
# A pair from a synthetic sequence (`frcnn.tracking.sequences`): the template around the target in frame t,
# the search crop around it in a later frame, shifted. The response is the foreground score of every
# anchor. An untrained head's map is noise, so this uses the checkpoint of `make track-demo` when it is
# there (`outputs/siamrpn_demo/last.pt`, or the file `FRCNN_SIAMRPN_CHECKPOINT` names), and otherwise shows
# the plain correlation of the two crops' 8x8-pooled pixels — what the head's correlation computes before any
# learning.

# %%
import os
from pathlib import Path

import torch.nn.functional as F

import frcnn
from frcnn.tracking.model import cross_correlate
from frcnn.tracking.pairs import TrackingPairs
from frcnn.tracking.randomization import CHALLENGES
from frcnn.tracking.sequences import generate_sequences, load_sequences

tmp = Path(tempfile.mkdtemp())
plain = {"textures": ["solid"], "backgrounds": ["gradient"], **dict.fromkeys(CHALLENGES, 0.0)}  # one plain target
sequence = load_sequences(generate_sequences(tmp / "seqs", num_sequences=1, length=30, seed=5, randomization=plain))[0]
template, search, box, _ = TrackingPairs([sequence], None, max_gap=10)[(3, 11)]
default = Path(frcnn.__file__).resolve().parents[1] / "outputs" / "siamrpn_demo" / "last.pt"
checkpoint = Path(os.environ.get("FRCNN_SIAMRPN_CHECKPOINT", default))
if checkpoint.is_file():
    from frcnn.tasks.load import load_tracker
    net = load_tracker(checkpoint).model.eval()
    with torch.no_grad():
        logits = net(template[None], search[None]).logits  # [1, 17*17*5, 2] (the model normalizes its uint8 crops)
    response = logits.softmax(-1)[0, :, 1].view(17, 17, 5).amax(-1)
    source = f"SiamRPN of {checkpoint.name}"
else:
    pool = lambda x: F.avg_pool2d(tracker_net.normalize(x[None]).mean(1, keepdim=True), 8)
    z, x = pool(template), pool(search)
    response = cross_correlate(x - x.mean(), (z - z.mean())[:, None])[0, 0]  # 31 - 15 + 1 = 17 cells, as the anchors
    source = "correlation of pooled pixels (untrained)"
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
axes[0].imshow(template.permute(1, 2, 0)); axes[0].set_title("template 127x127")
axes[1].imshow(search.permute(1, 2, 0)); axes[1].set_title("search 255x255 + target box")
axes[1].add_patch(Rectangle(box[:2].tolist(), float(box[2] - box[0]), float(box[3] - box[1]), fill=False, color="red", lw=2))
axes[2].imshow(response, cmap="viridis"); axes[2].set_title(f"17x17 response: {source}")
plt.show()
peak = divmod(int(response.argmax()), 17)
target_cell = [round(((float(box[i] + box[i + 2]) / 2) - 127.5) / 8) + 8 for i in (1, 0)]
print("response from", source, "; peak at cell", peak, "; target centre at cell", target_cell)
assert response.shape == (17, 17) and torch.isfinite(response).all()
if not checkpoint.is_file():  # a trained model's peak depends on how well it was trained; the correlation's does not
    assert max(abs(peak[0] - target_cell[0]), abs(peak[1] - target_cell[1])) <= 2

# %% [markdown]
# ## The loss, checked against the formulas
#
# Anchors with IoU > 0.6 are positive and < 0.3 negative; 64 are sampled per pair, at most 16 positive.
# With the normalized deltas of the RPN (δx = (Tx − Ax)/Aw, δy = (Ty − Ay)/Ah, δw = ln(Tw/Aw),
# δh = ln(Th/Ah)), the loss is L = L_cls + λ L_reg: the cross-entropy of the 2-way softmax over the
# sampled anchors, and the smooth L1 of the positives' deltas.

# %%
torch.manual_seed(0)
logits, deltas = torch.randn(1, 1445, 2), 0.1 * torch.randn(1, 1445, 4)
torch.manual_seed(1); losses = tracker_net.losses(logits, deltas, box[None])
torch.manual_seed(1); pos, neg, target = tracker_net.assign_targets(box[None])
a = tracker_net.anchors[pos[0]]
aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
ax_, ay = a[:, 0] + aw / 2, a[:, 1] + ah / 2
tw, th = box[2] - box[0], box[3] - box[1]
tx, ty = box[0] + tw / 2, box[1] + th / 2
by_hand = torch.stack([(tx - ax_) / aw, (ty - ay) / ah, torch.log(tw / aw), torch.log(th / ah)], -1)
assert torch.allclose(by_hand, target[0][pos[0]], atol=1e-5)
log_p = logits.log_softmax(-1)[0]
l_cls = -(log_p[pos[0], 1].sum() + log_p[neg[0], 0].sum()) / (pos.sum() + neg.sum())
d = (deltas[0][pos[0]] - by_hand).abs()
beta = tracker_net.smooth_l1_beta
l_reg = torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta).sum() / pos.sum()
print(f"{int(pos.sum())} positive + {int(neg.sum())} negative anchors sampled")
print(f"L_cls by hand {float(l_cls):.5f}  model {float(losses['loss_cls']):.5f}")
print(f"L_reg by hand {float(l_reg):.5f}  model {float(losses['loss_reg']):.5f} (lambda = {tracker_net.reg_weight})")
assert torch.isclose(l_cls, losses["loss_cls"]) and torch.isclose(tracker_net.reg_weight * l_reg, losses["loss_reg"])
