"""Writes the notebooks from the cell sources below (so they diff and review as plain Python).

    .venv/bin/python notebooks/build_notebooks.py

Notebooks are committed without outputs; `tests/test_notebooks.py` executes every one of them.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str):
    return new_code_cell(text.strip())


MATH = [
    md("""
# 4. The math behind the layers, checked numerically

Each formula below is written out by hand and compared with PyTorch's modules or autograd. Every check
is an `assert` that fails if the formula or the code is wrong; the notebook is executed by `make test`.
"""),
    code("""
import itertools

import torch
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # exact comparisons
"""),
    md("""
## Convolution output size

For input size $O$, padding $P$, kernel $K$, stride $S$ (and dilation 1): $N = \\lfloor (O + 2P - K) / S \\rfloor + 1$.
"""),
    code("""
def conv_out(o, p, k, s):
    return (o + 2 * p - k) // s + 1

checked = 0
for o, p, k, s in itertools.product([7, 8, 15, 32, 33], [0, 1, 2], [1, 3, 5, 7], [1, 2, 3]):
    if o + 2 * p < k:
        continue
    conv = torch.nn.Conv2d(1, 1, k, stride=s, padding=p)
    assert conv(torch.zeros(1, 1, o, o)).shape[-1] == conv_out(o, p, k, s), (o, p, k, s)
    checked += 1
print(f"output size formula holds for {checked} settings")
"""),
    md("""
## Convolution vs cross-correlation

Deep-learning "convolution" is cross-correlation: $y[i,j] = \\sum_{u,v} x[i+u, j+v]\\,w[u,v]$.
True convolution flips the kernel by 180°: $(x * w)[i,j] = \\sum_{u,v} x[i+u, j+v]\\,w[K-1-u, K-1-v]$.
"""),
    code("""
x = torch.randn(6, 6)
w = torch.randn(3, 3)

def correlate(x, w):
    k = w.shape[0]
    n = x.shape[0] - k + 1
    return torch.stack([torch.stack([(x[i:i + k, j:j + k] * w).sum() for j in range(n)]) for i in range(n)])

torch_out = F.conv2d(x[None, None], w[None, None])[0, 0]
assert torch.allclose(correlate(x, w), torch_out)
true_convolution = correlate(x, torch.rot90(w, 2))
assert not torch.allclose(true_convolution, torch_out)
assert torch.allclose(true_convolution, F.conv2d(x[None, None], torch.rot90(w, 2)[None, None])[0, 0])
print("F.conv2d is cross-correlation; convolution = correlation with the kernel rotated 180°")
"""),
    md("""
## Softmax + cross-entropy gradient

With $p = \\mathrm{softmax}(y)$ and $L = -\\log p_{gt}$: $\\partial L / \\partial y_i = p_i - \\mathbb{1}[i = gt]$.
"""),
    code("""
y = torch.randn(5, requires_grad=True)
gt = 3
F.cross_entropy(y[None], torch.tensor([gt])).backward()
p = torch.softmax(y.detach(), 0)
expected = p - F.one_hot(torch.tensor(gt), 5)
assert torch.allclose(y.grad, expected)
print("dL/dy =", y.grad.numpy().round(4))
"""),
    md("""
## Fully connected layer backprop

$y = Wx + b$, upstream gradient $\\delta = \\partial L/\\partial y$:
$\\partial L/\\partial W = \\delta x^\\top$, $\\partial L/\\partial b = \\delta$, $\\partial L/\\partial x = W^\\top \\delta$.
"""),
    code("""
fc = torch.nn.Linear(4, 3)
x = torch.randn(4, requires_grad=True)
delta = torch.randn(3)
fc(x).backward(delta)
assert torch.allclose(fc.weight.grad, torch.outer(delta, x.detach()))
assert torch.allclose(fc.bias.grad, delta)
assert torch.allclose(x.grad, fc.weight.detach().T @ delta)
print("fully connected gradients match autograd")
"""),
    md("""
## Convolution backprop

For $y = x \\star w$ (cross-correlation, stride 1, no padding) and upstream $\\delta$:
the weight gradient is the cross-correlation of the input with $\\delta$, $\\partial L/\\partial w = x \\star \\delta$;
the input gradient is $\\delta$, zero-padded by $K-1$, correlated with the kernel rotated 180° — i.e. the
full *convolution* of $\\delta$ with $w$.
"""),
    code("""
x = torch.randn(1, 1, 7, 7, requires_grad=True)
w = torch.randn(1, 1, 3, 3, requires_grad=True)
y = F.conv2d(x, w)
delta = torch.randn_like(y)
y.backward(delta)
grad_w = F.conv2d(x.detach(), delta)
grad_x = F.conv2d(F.pad(delta, (2, 2, 2, 2)), torch.rot90(w.detach(), 2, dims=(2, 3)))
assert torch.allclose(w.grad, grad_w)
assert torch.allclose(x.grad, grad_x)
print("dL/dw = x ⋆ δ and dL/dx = pad(δ) ⋆ rot180(w) match autograd")
"""),
    md("""
## Max-pool gradient routing

Max pooling passes each window's upstream gradient to the position of its maximum, and zero elsewhere.
"""),
    code("""
x = torch.randn(1, 1, 4, 4, requires_grad=True)
y = F.max_pool2d(x, 2)
delta = torch.randn_like(y)
y.backward(delta)
expected = torch.zeros(4, 4)
for i in range(2):
    for j in range(2):
        window = x.detach()[0, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
        u, v = divmod(int(window.argmax()), 2)
        expected[2 * i + u, 2 * j + v] = delta[0, 0, i, j]
assert torch.allclose(x.grad[0, 0], expected)
print(x.grad[0, 0])
"""),
    md("""
## Smooth L1 and its gradient

$\\mathrm{smooth}_{L1}(d) = 0.5 d^2/\\beta$ if $|d| < \\beta$, else $|d| - 0.5\\beta$; gradient $d/\\beta$ inside, $\\mathrm{sign}(d)$ outside.
Ren et al. use $\\beta = 1$ for the box head and py-faster-rcnn's RPN $\\sigma = 3$, i.e. $\\beta = 1/\\sigma^2 = 1/9$.
"""),
    code("""
for beta in (1.0, 1 / 9):
    d = torch.linspace(-3, 3, 61, requires_grad=True)
    F.smooth_l1_loss(d, torch.zeros_like(d), beta=beta, reduction="sum").backward()
    dd = d.detach()
    value = torch.where(dd.abs() < beta, 0.5 * dd ** 2 / beta, dd.abs() - 0.5 * beta)
    assert torch.allclose(F.smooth_l1_loss(dd, torch.zeros_like(dd), beta=beta, reduction="none"), value)
    assert torch.allclose(d.grad, torch.where(dd.abs() < beta, dd / beta, torch.sign(dd)))
print("smooth L1 value and gradient match for beta = 1 and 1/9")
"""),
    md("""
## The RPN loss normalization

$L = \\frac{1}{N_{cls}} \\sum_i L_{cls}(p_i, p_i^*) + \\lambda \\frac{1}{N_{reg}} \\sum_i p_i^* L_{reg}(t_i, t_i^*)$,
per image, with $N_{cls}$ the image's sampled anchors (256), $N_{reg}$ the number of anchor locations
of the image itself ($\\lceil h/16 \\rceil \\lceil w/16 \\rceil$, about 2400 for the paper's 600x1000 images;
padding added to batch it beside a larger image does not count) and $\\lambda = 10$, so both terms weigh
about the same. The batch loss is the mean over images. Checked against `frcnn.modeling.rpn.RPN.losses`.
"""),
    code("""
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.rpn import RPN, RPNHead, RPNTargets

torch.set_default_dtype(torch.float32)
rpn = RPN(head=RPNHead(in_channels=4), anchor_generator=AnchorGenerator(), loss_normalization="paper")
B, H, W, A = 2, 5, 6, 9
N = H * W * A
g = torch.Generator().manual_seed(0)
logits, deltas, target_deltas = torch.randn(B, N, generator=g), torch.randn(B, N, 4, generator=g), torch.randn(B, N, 4, generator=g)
pos = torch.rand(B, N, generator=g) < 0.05
neg = ~pos & (torch.rand(B, N, generator=g) < 0.3)
# image 0 fills the 5x6 map (80x96 px); image 1 is 48x64 px, padded: its own N_reg is 3*4 = 12, not 30
image_sizes = torch.tensor([[80, 96], [48, 64]])
n_reg = rpn.num_locations(image_sizes)
assert n_reg.tolist() == [30, 12]
losses = rpn.losses(logits, deltas, RPNTargets(sampled_pos=pos, sampled_neg=neg, deltas=target_deltas), num_locations=n_reg)

beta = 1 / 9
l_cls, l_reg = 0.0, 0.0
for i in range(B):  # one image at a time, as py-faster-rcnn trains, then the mean over the batch
    sampled = pos[i] | neg[i]
    bce = -(pos[i].float() * F.logsigmoid(logits[i]) + (~pos[i]).float() * F.logsigmoid(-logits[i]))
    l_cls += bce[sampled].sum() / sampled.sum() / B
    d = (deltas[i] - target_deltas[i])[pos[i]]
    l_reg += 10 * torch.where(d.abs() < beta, 0.5 * d ** 2 / beta, d.abs() - 0.5 * beta).sum() / n_reg[i] / B
assert torch.allclose(losses["loss_rpn_cls"], l_cls)
assert torch.allclose(losses["loss_rpn_reg"], l_reg)
print(f"N_reg = {n_reg.tolist()}, lambda = 10: {losses}")
"""),
]

ANCHORS = [
    md("""
# 1. Anchors and the RPN, step by step

Everything here runs the project's own modules (`frcnn.modeling.anchors`, `frcnn.modeling.matching`, `frcnn.modeling.sampling`,
`frcnn.modeling.proposals`) on one image of the built-in synthetic data set, at the demo's scale (192x256 pixels,
anchors of 32/64/128 px at stride 16). Each step ends with an `assert`.
"""),
    code("""
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.matching import BACKGROUND, FOREGROUND, IGNORE, match
from frcnn.modeling.sampling import sample_mask
from frcnn.modeling.box_ops import batched_pairwise_iou
from frcnn.data.synthetic import CLASSES, make_image

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
"""),
    md("""
## The 9 anchors of one location

3 sizes x 3 aspect ratios (h/w = 0.5, 1, 2), each of area size², centred at the middle of a stride-16 cell.
"""),
    code("""
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
"""),
    md("""
## IoU labelling

Positive at IoU ≥ 0.7, plus every ground truth's best anchor(s); negative below 0.3; in between ignored;
anchors crossing the image border are ignored in training (straddle threshold 0).
"""),
    code("""
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
"""),
    md("""
## The 256-anchor minibatch

At most 128 positives, the rest negatives, drawn at random.
"""),
    code("""
pos, neg = sample_mask((labels == FOREGROUND)[None], (labels == BACKGROUND)[None], num_samples=256, positive_fraction=0.5,
                       generator=torch.Generator().manual_seed(0))
print(f"sampled: {int(pos.sum())} positive + {int(neg.sum())} negative = {int((pos | neg).sum())}")
assert int((pos | neg).sum()) == 256 and int(pos.sum()) <= 128
assert int(pos.sum()) == min(128, int((labels == FOREGROUND).sum()))
"""),
    md("""
## From anchors to proposals

An untrained RPN would score anchors at random, so this illustration uses an *oracle* objectness (the
anchor's IoU with the ground truth, plus noise) and small random deltas, then follows the proposal layer
stage by stage with `torchvision.ops`, counting boxes, and checks the result equals the batched
`frcnn.modeling.proposals.generate_proposals`. (In the paper's setting, 600x1000 images have ~20000 anchors, so
top-6000 and top-2000 bite; here there are fewer anchors than 6000.)
"""),
    code("""
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
"""),
    md("""
## The same RPN as a tracker: SiamRPN

SiamRPN (Li et al., CVPR 2018) keeps the RPN's anchors, matcher, sampler and box coder and changes where
the head's weights come from: a Siamese backbone embeds a 127x127 **template** crop of the target and a
255x255 **search** crop of the next frame, and the template's features *are* the kernels the search
features are correlated with. `frcnn.tracking` builds it from the modules above. Its anchors: one size
(64 px = 8 x the stride) and 5 ratios (0.33, 0.5, 1, 2, 3) at every cell of the 17x17 response map, the
centre cell on the search crop's centre.
"""),
    code("""
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
"""),
    md("""
## A template/search pair and its response map

A pair from a synthetic sequence (`frcnn.tracking.sequences`): the template around the target in frame t,
the search crop around it in a later frame, shifted. The response is the foreground score of every
anchor. An untrained head's map is noise, so this uses the checkpoint of `make track-demo` when it is
there (`outputs/siamrpn_demo/last.pt`, or the file `FRCNN_SIAMRPN_CHECKPOINT` names), and otherwise shows
the plain correlation of the two crops' 8x8-pooled pixels — what the head's correlation computes before any
learning.
"""),
    code("""
import os
from pathlib import Path

import torch.nn.functional as F

import frcnn
from frcnn.tracking.model import cross_correlate
from frcnn.tracking.pairs import TrackingPairs
from frcnn.tracking.sequences import generate_sequences, load_sequences

tmp = Path(tempfile.mkdtemp())
sequence = load_sequences(generate_sequences(tmp / "seqs", num_sequences=1, length=30, seed=5))[0]
template, search, box, _ = TrackingPairs([sequence], None, max_gap=10)[(3, 11)]
default = Path(frcnn.__file__).resolve().parents[1] / "outputs" / "siamrpn_demo" / "last.pt"
checkpoint = Path(os.environ.get("FRCNN_SIAMRPN_CHECKPOINT", default))
if checkpoint.is_file():
    from frcnn.tracking.training import load_tracker
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
"""),
    md("""
## The loss, checked against the formulas

Anchors with IoU > 0.6 are positive and < 0.3 negative; 64 are sampled per pair, at most 16 positive.
With the normalized deltas of the RPN (δx = (Tx − Ax)/Aw, δy = (Ty − Ay)/Ah, δw = ln(Tw/Aw),
δh = ln(Th/Ah)), the loss is L = L_cls + λ L_reg: the cross-entropy of the 2-way softmax over the
sampled anchors, and the smooth L1 of the positives' deltas.
"""),
    code("""
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
"""),
]

ROI = [
    md("""
# 2. RoI sampling and the box head

The second stage on one synthetic image, with the project's `frcnn.modeling.roi_heads.RoIHeads`: the 128-RoI
sample (at most 32 foreground, IoU ≥ 0.5; background IoU in [0.1, 0.5)), the IoU distributions, what
RoIAlign and RoI max pooling produce for one box, and class-specific regression targets.
"""),
    code("""
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from torchvision.ops import roi_align, roi_pool

from frcnn.modeling.box_coder import decode_boxes
from frcnn.data.synthetic import CLASSES, make_image
from frcnn.modeling.roi_heads import BoxPredictor, RoIHeads
from frcnn.modeling.box_ops import batched_pairwise_iou
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
"""),
    md("""
## The 128-RoI sample

Ground-truth boxes are appended to the proposals first (py-faster-rcnn), so every image has foreground.
"""),
    code("""
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
"""),
    md("""
## Class-specific regression targets

Each foreground RoI gets deltas to its matched ground truth, normalized by (0.1, 0.1, 0.2, 0.2); only
the deltas of the ground-truth class are trained. Decoding the targets gives the ground truth back.
"""),
    code("""
t = sample.regression_targets[0][fg]
decoded = decode_boxes(t, sample.boxes[0][fg], (10.0, 10.0, 5.0, 5.0))
matched = gt[batched_pairwise_iou(sample.boxes[0][fg][None], gt[None])[0].argmax(1)]
assert torch.allclose(decoded, matched, atol=1e-3)
assert (sample.regression_targets[0][~fg] == 0).all()
print("target deltas (first 5 foreground RoIs):")
print(t[:5].numpy().round(3))
print("std of the targets per coordinate:", t.std(0).numpy().round(3), "(normalized: order 1)")
"""),
    md("""
## RoIAlign vs RoI max pooling for one box

RoI pooling (Fast R-CNN) snaps the box to the feature grid and max-pools integer bins; RoIAlign samples
the feature map bilinearly at exact positions. On a smooth feature map the difference shows as blockiness.
"""),
    code("""
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
"""),
]

TRAIN = [
    md("""
# 3. Train, evaluate, look

A ResNet-18-C4 Faster R-CNN trained from scratch on a small synthetic set for about a CPU minute,
through the same `train(cfg)` that `scripts/train.py` runs, with the demo's settings
(`experiment=demo`; the run's overrides are `frcnn.recipes.QUICK`). That buys only a first, weak
detector: `make demo` trains the same model for up to ten minutes on 800 images and reaches COCO AP ≈ 0.5
(docs/benchmarks.md).

The test suite trains this very run once per session and shares it with this notebook through
`FRCNN_TRAINED_RUN`; opened by hand, the notebook trains it here.
"""),
    code("""
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from frcnn.recipes import QUICK, QUICK_DATA, quick_run, shared_run

# quick_run composes conf/train.yaml (found from the package, wherever this notebook runs) with these
# overrides, generates the data and calls frcnn.engine.trainer.train(cfg), as scripts/train.py does.
print("data:", QUICK_DATA)
print("overrides:", QUICK)
run = shared_run() or quick_run(Path(tempfile.mkdtemp()))
print("run directory:", run, sorted(p.name for p in run.iterdir()))
assert (run / "last.pt").is_file() and torch.load(run / "last.pt", weights_only=True)["iteration"] == 60
"""),
    md("""## Loss curves (from the run's `metrics.jsonl`)"""),
    code("""
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
"""),
    md("""## COCO metrics on the validation images"""),
    code("""
val = [r for r in records if "val/AP" in r][-1]
for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
    print(f"{k:6s} {val['val/' + k]:.4f}")
assert 0.0 <= val["val/AP"] <= val["val/AP50"] <= 1.0
"""),
    md("""
## Detections next to the ground truth, and failure cases

Green: ground truth; red: detections with score ≥ 0.5. The images are ordered from best to worst
recall at IoU 0.5, so the right-hand ones are failure cases: missed small objects, confused shapes.
"""),
    code("""
from frcnn.data.coco import CocoDetection
from frcnn.inference import load_model
from torchvision.ops import box_iou

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
"""),
    md("""
## Why the AP is what it is: the error analysis

TIDE (Bolya et al., 2020) puts every false positive and every missed object into one error type and
says how much AP50 an oracle fixing only that type would add (dAP); COCO's analyze breakdown reads the
PR curve under ever more forgiving judges. `scripts/evaluate.py checkpoint=... analyze=true` writes this
and more (confusion matrix, calibration, the worst images drawn) into one `report.html`.
"""),
    code("""
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
"""),
]


EXPLAIN = [
    md("""
# 5. Explaining detections

Why did the detector put *this* box *here*? This notebook explains detections of a trained frcnn model
with every method in `frcnn.explain`, then checks whether the maps are faithful: deletion / insertion
curves, the sanity check against a randomized model, and the ROAR table measured in
`docs/explanations.md`.

The model is the small run of notebook 3 (the test suite shares it; opened by hand, it is trained here
in about a CPU minute). It is a weak detector, so its maps are noisy; point `CHECKPOINT` at the model
`make demo` trains (`../outputs/demo/best.pt`) for sharper ones.
"""),
    code("""
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle

import frcnn
from frcnn.data.images import read_rgb
from frcnn.explain import METHODS, DetectionScore, explain, find_detections
from frcnn.explain.faithfulness import deletion_insertion, sanity_check
from frcnn.inference import load_model
from frcnn.recipes import quick_run, shared_run

CHECKPOINT = None  # e.g. "../outputs/demo/best.pt"
checkpoint = Path(CHECKPOINT) if CHECKPOINT else (shared_run() or quick_run(Path(tempfile.mkdtemp()))) / "last.pt"
model, categories, cfg = load_model(checkpoint, torch.device("cpu"))

# The validation image whose best detection scores highest, among the first three.
candidates = []
for path in sorted(Path(cfg.data.val.images).glob("*.png"))[:3]:
    image = torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        best = model([image]).detections[0]["scores"][:1].tolist()
    candidates.append((best[0] if best else 0.0, path, image))
score_best, path, image = max(candidates, key=lambda c: c[0])
detections = find_detections(model, image, top=1, score_thresh=0.0)
print(path.name, [(categories.name(d.label), round(d.score, 3), [round(v) for v in d.box.tolist()]) for d in detections])
"""),
    md("""
## The target: one detection, followed through every RoI

NMS may keep another RoI once the input is perturbed, so the score of detection `d` on an image `x` is
D-RISE's similarity, maximised over all RoIs before NMS:
`s(d; x) = max_r IoU(box_d, box_r[c_d]) · cos(e_c, p_r)`, with `e_c` the one-hot vector of `d`'s class
over the K+1 classes, so the class term is `p_r[c] / ||p_r||` and falls as an RoI turns background-like.
On the image `d` came from, its own RoI reproduces the box (IoU 1) and scores `p_d[c] / ||p_d||`.
On noisy copies it degrades smoothly, where the final detection list may simply lose it.
"""),
    code("""
score = DetectionScore(model, detections, max_rois=4)  # the 4 RoIs nearest the detection (see below)
with torch.no_grad():
    print("s(d) on the image itself:", score(image[None])[0].tolist())
    generator = torch.Generator().manual_seed(0)
    for sigma in (0.05, 0.1, 0.2, 0.4):
        noisy = (image + sigma * torch.randn(image.shape, generator=generator)).clamp(0, 1)
        print(f"noise sigma {sigma}: s(d) = {[round(v, 3) for v in score(noisy[None])[0].tolist()]}")
    own = torch.stack([d.probs[d.label] / d.probs.norm() for d in detections])
    assert torch.allclose(score(image[None])[0], own, atol=1e-4)
"""),
    md("""
## Every method on the same detections

White-box: vanilla gradient, guided backpropagation, Grad-CAM on the trunk's feature map and on the RoI
box head, guided Grad-CAM, Integrated Gradients, SmoothGrad, VarGrad. Black-box: D-RISE (random masks,
scored in batches) and KernelSHAP over image patches. Sample counts are cut here to keep the notebook under
a minute (IG: 6 steps; SmoothGrad, VarGrad: 6 samples; D-RISE: 32 masks on an 8x8 grid, one batch; KernelSHAP: 12 patches of 64 px,
16 coalitions);
`scripts/explain.py` uses the full ones (`conf/explain.yaml`). The detection is followed
through the 4 RoIs nearest it (`max_rois=4`): the box head runs once per RoI and is most of the cost.
"""),
    code("""
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
"""),
    md("""
## Deletion and insertion

Delete the pixels in the order a map ranks them (replacing them with a blurred copy) and watch `s(d)`:
a faithful map makes it fall fast (small deletion AUC). Insert them into the blurred image and it
should rise fast (large insertion AUC). A random ranking is the reference.
"""),
    code("""
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
"""),
    md("""
The substrate is a choice with consequences: a black fill draws new edges, which a detector may
respond to by itself. The same map, four substrates:
"""),
    code("""
for substrate in ("black", "grey", "blur", "noise"):
    row = {name: deletion_insertion(column, image, results[name][0].saliency, substrate=substrate, steps=4)
           for name in ("gradcam", "drise")}
    print(f"{substrate:6s}", "  ".join(f"{n}: del {c.deletion_auc:.3f} ins {c.insertion_auc:.3f}" for n, c in row.items()))
"""),
    md("""
## Sanity check: does the map depend on the weights?

Adebayo et al. (2018): re-initialize the layers from the predictor down to the stem, one stage more at a
time, and compare each map with the trained model's (Spearman rank correlation of the magnitudes). A
method that explains the model must change; an edge detector, which ignores the model, does not.
"""),
    code("""
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
"""),
    md("""
## RemOve And Retrain

Deletion curves change the images the model sees at test time only, so a fall in score mixes "the map
found the evidence" with "the image left the training distribution". ROAR (Hooker et al. 2019) retrains:
remove the top k % of every training and validation image, train the same model from scratch, and
compare the AP. `scripts/roar.py` runs it; the table it measured is in `docs/explanations.md`:
"""),
    code("""
docs = Path(frcnn.__file__).resolve().parents[1] / "docs" / "explanations.md"
text = docs.read_text() if docs.is_file() else ""
section = text.split("## RemOve And Retrain", 1)[-1].split("\\n## ", 1)[0] if "## RemOve And Retrain" in text else "(docs/explanations.md not found)"
print(section.strip())
"""),
]


def write(name: str, cells) -> Path:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = HERE / name
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    print(write("1_anchors_and_the_rpn.ipynb", ANCHORS))
    print(write("2_roi_sampling_and_the_head.ipynb", ROI))
    print(write("3_train_evaluate_look.ipynb", TRAIN))
    print(write("4_math_behind_the_layers.ipynb", MATH))
    print(write("5_explaining_detections.ipynb", EXPLAIN))
