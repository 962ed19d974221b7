import torch

from frcnn.modeling.sampling import sample_fixed, sample_mask


def masks(b, n, p_pos, p_neg, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(b, n, generator=g)
    return r < p_pos, (r >= p_pos) & (r < p_pos + p_neg)


def test_rpn_sample_exactly_256_at_most_128_positive():
    pos, neg = masks(3, 20000, 0.05, 0.9)
    sp, sn = sample_mask(pos, neg, num_samples=256, positive_fraction=0.5)
    assert (sp & ~pos).sum() == 0 and (sn & ~neg).sum() == 0
    assert sp.sum(1).tolist() == [128] * 3
    assert (sp.sum(1) + sn.sum(1)).tolist() == [256] * 3


def test_rpn_sample_few_positives_filled_with_negatives():
    pos, neg = masks(2, 5000, 0.002, 0.9, seed=1)
    sp, sn = sample_mask(pos, neg, num_samples=256, positive_fraction=0.5)
    assert sp.sum(1).tolist() == pos.sum(1).tolist()
    assert (sp.sum(1) + sn.sum(1)).tolist() == [256, 256]


def test_rpn_sample_few_negatives_gives_smaller_sample():
    pos = torch.zeros(1, 100, dtype=torch.bool)
    pos[0, :10] = True
    neg = torch.zeros(1, 100, dtype=torch.bool)
    neg[0, 10:30] = True
    sp, sn = sample_mask(pos, neg, num_samples=256, positive_fraction=0.5)
    assert sp.sum() == 10 and sn.sum() == 20


def test_rpn_sample_is_random():
    pos, neg = masks(1, 5000, 0.2, 0.7)
    a = sample_mask(pos, neg, num_samples=256, positive_fraction=0.5, generator=torch.Generator().manual_seed(0))
    b = sample_mask(pos, neg, num_samples=256, positive_fraction=0.5, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a[0], b[0])


def test_roi_sample_exactly_128_at_most_32_foreground():
    fg, bg = masks(4, 2000, 0.1, 0.5)
    idx, valid = sample_fixed(fg, bg, torch.zeros_like(fg), num_samples=128, positive_fraction=0.25)
    assert idx.shape == (4, 128) and valid.all()
    is_fg = fg.gather(1, idx)
    assert is_fg.sum(1).tolist() == [32] * 4
    assert bg.gather(1, idx)[:, 32:].all()
    assert len(set(idx[0].tolist())) == 128  # without repetition when there is enough


def test_roi_sample_fills_background_by_repetition():
    fg = torch.zeros(1, 50, dtype=torch.bool)
    bg = torch.zeros(1, 50, dtype=torch.bool)
    fg[0, :5] = True
    bg[0, 5:15] = True  # 10 background for 123 slots
    idx, valid = sample_fixed(fg, bg, torch.zeros_like(fg), num_samples=128, positive_fraction=0.25)
    assert valid.all()
    assert fg.gather(1, idx).sum() == 5
    picked = idx[0, 5:].tolist()
    assert set(picked) == set(range(5, 15))
    counts = torch.bincount(torch.tensor(picked), minlength=15)[5:]
    assert counts.max() - counts.min() <= 1  # used as evenly as possible


def test_roi_sample_without_background_uses_fallback_and_never_repeats_foreground():
    fg = torch.zeros(2, 20, dtype=torch.bool)
    fg[:, :3] = True
    fallback = torch.zeros(2, 20, dtype=torch.bool)
    fallback[0, 10:20] = True
    idx, valid = sample_fixed(fg, torch.zeros_like(fg), fallback, num_samples=16, positive_fraction=0.25)
    assert valid[0].all()
    assert set(idx[0, 3:].tolist()) <= set(range(10, 20))  # image 0: the low-IoU pool
    # image 1: nothing but 3 foreground: 3 valid foreground slots, the other 13 invalid (no repetition)
    assert valid[1].tolist() == [True] * 3 + [False] * 13
    assert sorted(idx[1, :3].tolist()) == [0, 1, 2]


def test_roi_sample_foreground_never_exceeds_its_cap():
    # 100 proposals, all foreground, no background and no fallback: at most 32 of 128 slots are used.
    fg = torch.ones(2, 100, dtype=torch.bool)
    z = torch.zeros_like(fg)
    idx, valid = sample_fixed(fg, z, z, num_samples=128, positive_fraction=0.25)
    assert valid.sum(1).tolist() == [32, 32]
    assert (fg.gather(1, idx) & valid).sum(1).tolist() == [32, 32]
    assert len(set(idx[0][valid[0]].tolist())) == 32  # drawn without replacement


def test_roi_sample_with_no_candidates_is_invalid():
    z = torch.zeros(1, 10, dtype=torch.bool)
    _, valid = sample_fixed(z, z, z, num_samples=8, positive_fraction=0.25)
    assert not valid.any()
