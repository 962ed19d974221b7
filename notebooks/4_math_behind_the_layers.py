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
# # 4. The math behind the layers, checked numerically
#
# Each formula below is written out by hand and compared with PyTorch's modules or autograd. Every check
# is an `assert` that fails if the formula or the code is wrong; the notebook is executed by `make test`.

# %%
import itertools

import torch
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # exact comparisons


# %% [markdown]
# ## Convolution output size
#
# For input size $O$, padding $P$, kernel $K$, stride $S$ (and dilation 1): $N = \lfloor (O + 2P - K) / S \rfloor + 1$.

# %%
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

# %% [markdown]
# ## Convolution vs cross-correlation
#
# Deep-learning "convolution" is cross-correlation: $y[i,j] = \sum_{u,v} x[i+u, j+v]\,w[u,v]$.
# True convolution flips the kernel by 180°: $(x * w)[i,j] = \sum_{u,v} x[i+u, j+v]\,w[K-1-u, K-1-v]$.

# %%
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

# %% [markdown]
# ## Softmax + cross-entropy gradient
#
# With $p = \mathrm{softmax}(y)$ and $L = -\log p_{gt}$: $\partial L / \partial y_i = p_i - \mathbb{1}[i = gt]$.

# %%
y = torch.randn(5, requires_grad=True)
gt = 3
F.cross_entropy(y[None], torch.tensor([gt])).backward()
p = torch.softmax(y.detach(), 0)
expected = p - F.one_hot(torch.tensor(gt), 5)
assert torch.allclose(y.grad, expected)
print("dL/dy =", y.grad.numpy().round(4))

# %% [markdown]
# ## Fully connected layer backprop
#
# $y = Wx + b$, upstream gradient $\delta = \partial L/\partial y$:
# $\partial L/\partial W = \delta x^\top$, $\partial L/\partial b = \delta$, $\partial L/\partial x = W^\top \delta$.

# %%
fc = torch.nn.Linear(4, 3)
x = torch.randn(4, requires_grad=True)
delta = torch.randn(3)
fc(x).backward(delta)
assert torch.allclose(fc.weight.grad, torch.outer(delta, x.detach()))
assert torch.allclose(fc.bias.grad, delta)
assert torch.allclose(x.grad, fc.weight.detach().T @ delta)
print("fully connected gradients match autograd")

# %% [markdown]
# ## Convolution backprop
#
# For $y = x \star w$ (cross-correlation, stride 1, no padding) and upstream $\delta$:
# the weight gradient is the cross-correlation of the input with $\delta$, $\partial L/\partial w = x \star \delta$;
# the input gradient is $\delta$, zero-padded by $K-1$, correlated with the kernel rotated 180° — i.e. the
# full *convolution* of $\delta$ with $w$.

# %%
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

# %% [markdown]
# ## Max-pool gradient routing
#
# Max pooling passes each window's upstream gradient to the position of its maximum, and zero elsewhere.

# %%
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

# %% [markdown]
# ## Smooth L1 and its gradient
#
# $\mathrm{smooth}_{L1}(d) = 0.5 d^2/\beta$ if $|d| < \beta$, else $|d| - 0.5\beta$; gradient $d/\beta$ inside, $\mathrm{sign}(d)$ outside.
# Ren et al. use $\beta = 1$ for the box head and py-faster-rcnn's RPN $\sigma = 3$, i.e. $\beta = 1/\sigma^2 = 1/9$.

# %%
for beta in (1.0, 1 / 9):
    d = torch.linspace(-3, 3, 61, requires_grad=True)
    F.smooth_l1_loss(d, torch.zeros_like(d), beta=beta, reduction="sum").backward()
    dd = d.detach()
    value = torch.where(dd.abs() < beta, 0.5 * dd ** 2 / beta, dd.abs() - 0.5 * beta)
    assert torch.allclose(F.smooth_l1_loss(dd, torch.zeros_like(dd), beta=beta, reduction="none"), value)
    assert torch.allclose(d.grad, torch.where(dd.abs() < beta, dd / beta, torch.sign(dd)))
print("smooth L1 value and gradient match for beta = 1 and 1/9")

# %% [markdown]
# ## The RPN loss normalization
#
# $L = \frac{1}{N_{cls}} \sum_i L_{cls}(p_i, p_i^*) + \lambda \frac{1}{N_{reg}} \sum_i p_i^* L_{reg}(t_i, t_i^*)$,
# per image, with $N_{cls}$ the image's sampled anchors (256), $N_{reg}$ the number of anchor locations
# of the image itself ($\lceil h/16 \rceil \lceil w/16 \rceil$, about 2400 for the paper's 600x1000 images;
# padding added to batch it beside a larger image does not count) and $\lambda = 10$, so both terms weigh
# about the same. The batch loss is the mean over images. Checked against `frcnn.modeling.rpn.RPN.losses`.

# %%
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
