"""Learning-rate multipliers: hand-computed values at chosen iterations, and the lrs LambdaLR applies."""

import pickle

import pytest
import torch

from frcnn.engine.schedule import WarmupCosine, WarmupMultiStep, linear_warmup


def test_linear_warmup_rises_from_factor_to_one():
    # factor (1 - it/iters) + it/iters, with factor 0.1 over 4 steps
    assert [linear_warmup(it, 4, 0.1) for it in range(6)] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0, 1.0], abs=1e-12)
    assert linear_warmup(0, 1000, 0.001) == pytest.approx(0.001, abs=1e-15)
    assert linear_warmup(500, 1000, 0.001) == pytest.approx(0.5005, abs=1e-12)
    assert linear_warmup(999, 1000, 0.001) == pytest.approx(0.999001, abs=1e-12)
    assert linear_warmup(1000, 1000, 0.001) == 1.0 and linear_warmup(10**6, 1000, 0.001) == 1.0
    assert linear_warmup(0, 0, 0.001) == 1.0  # warmup_iters=0: no warm-up at all


def test_warmup_multistep_values_and_milestone_boundaries():
    s = WarmupMultiStep(milestones=[30, 10], gamma=0.1, warmup_iters=4, warmup_factor=0.1)  # milestones in any order
    expected = {0: 0.1, 2: 0.55, 4: 1.0, 9: 1.0, 10: 0.1, 29: 0.1, 30: 0.01, 10**5: 0.01}
    assert {it: s(it) for it in expected} == pytest.approx(expected, abs=1e-12)
    # a milestone inside the warm-up: both factors apply, 0.55 (half-way up from 0.1) x 0.1
    overlap = WarmupMultiStep(milestones=[10], gamma=0.1, warmup_iters=20, warmup_factor=0.1)
    assert overlap(9) == pytest.approx(0.505, abs=1e-12)  # 0.1 x 11/20 + 9/20, before the milestone
    assert overlap(10) == pytest.approx(0.055, abs=1e-12)
    assert overlap(20) == pytest.approx(0.1, abs=1e-12)


def test_warmup_cosine_values_and_final_factor():
    # 0.5 (1 + cos(pi t)) at t = 1/3, 1/2, 2/3, 1 is 0.75, 0.5, 0.25, 0
    s = WarmupCosine(max_iters=120, warmup_iters=0, final_factor=0.0)
    expected = {0: 1.0, 40: 0.75, 60: 0.5, 80: 0.25, 120: 0.0, 500: 0.0}  # held at the end, not rising again
    assert {it: s(it) for it in expected} == pytest.approx(expected, abs=1e-12)
    # decay to final_factor 0.1: 0.1 + 0.9 x the above
    s = WarmupCosine(max_iters=120, warmup_iters=0, final_factor=0.1)
    expected = {0: 1.0, 40: 0.775, 60: 0.55, 80: 0.325, 120: 0.1, 500: 0.1}
    assert {it: s(it) for it in expected} == pytest.approx(expected, abs=1e-12)
    # the warm-up multiplies the cosine from iteration 0 (the cosine's clock is not delayed by it):
    # at it = 5 of 10, warm-up 0.55; the cosine at t = 5/120 is 0.5 (1 + cos 7.5°) = 0.99572243
    s = WarmupCosine(max_iters=120, warmup_iters=10, warmup_factor=0.1, final_factor=0.0)
    assert s(0) == pytest.approx(0.1, abs=1e-12)
    assert s(5) == pytest.approx(0.55 * 0.99572243, abs=1e-8)
    assert s(60) == pytest.approx(0.5, abs=1e-12)


def test_lambdalr_applies_the_schedule_and_resumes_from_its_state():
    """The trainer steps LambdaLR once per iteration: iteration ``it`` trains at base lr x schedule(it)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupMultiStep(milestones=[6], gamma=0.1, warmup_iters=4, warmup_factor=0.1))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.002, 0.0065, 0.011, 0.0155, 0.02, 0.02, 0.002, 0.002], abs=1e-12)

    # a checkpoint keeps the schedule's state (the multiplier is a picklable object, not a lambda)
    state = pickle.loads(pickle.dumps(sched.state_dict()))
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, WarmupMultiStep(milestones=[1], gamma=0.5))  # overwritten by the state
    sched2.load_state_dict(state)
    sched2.step()
    assert sched2.last_epoch == 9 and opt2.param_groups[0]["lr"] == pytest.approx(0.002, abs=1e-12)
