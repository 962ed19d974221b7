"""frcnn.modeling.threaded: torchvision's single-threaded CPU kernels spread over threads give torchvision's results."""

import pytest
import torch
from torchvision import ops

from frcnn.modeling import threaded


@pytest.fixture
def three_threads(monkeypatch):
    """Chunk into three whatever the machine's core count (the chunking is what is tested, not the speed)."""
    monkeypatch.setattr(threaded, "thread_count", lambda device: 3)


def random_rois(g: torch.Generator, m: int, images: int, size: float) -> torch.Tensor:
    xy = torch.rand(m, 2, generator=g) * size
    wh = torch.rand(m, 2, generator=g) * size / 2 + 1
    return torch.cat([torch.randint(0, images, (m, 1), generator=g).float(), xy, xy + wh], dim=1)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("sampling_ratio,aligned", [(0, True), (2, False)])
def test_roi_align_equals_torchvision_forward_and_backward(three_threads, channels_last, sampling_ratio, aligned):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 8, 20, 24, generator=g)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    rois = random_rois(g, 200, 3, 150.0)
    ours_in, theirs_in = features.clone().requires_grad_(), features.clone().requires_grad_()
    ours = threaded.roi_align(ours_in, rois, (7, 7), 1 / 8, sampling_ratio, aligned)
    theirs = ops.roi_align(theirs_in, rois, (7, 7), 1 / 8, sampling_ratio, aligned)
    assert ours.grad_fn is not None and type(ours.grad_fn).__name__.startswith("_ChunkedRoIAlign")  # the threaded path ran
    assert torch.equal(ours, theirs)  # the same kernel on each chunk: bitwise
    upstream = torch.randn(theirs.shape, generator=g)
    ours.backward(upstream)
    theirs.backward(upstream)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad)  # summed per chunk: equal up to addition order


def test_roi_align_under_inference_mode_and_for_few_rois(three_threads, monkeypatch):
    g = torch.Generator().manual_seed(1)
    features, rois = torch.randn(2, 4, 16, 16, generator=g), random_rois(g, 120, 2, 100.0)
    calls = []
    chunked = threaded._ChunkedRoIAlign.apply
    monkeypatch.setattr(threaded._ChunkedRoIAlign, "apply", lambda *a: calls.append(a[-1]) or chunked(*a))
    with torch.inference_mode():  # the workers run in the caller's mode (an inference tensor cannot be saved)
        out = threaded.roi_align(features, rois, (5, 5), 0.25, 2, True)
    assert calls == [3] and torch.equal(out, ops.roi_align(features, rois, (5, 5), 0.25, 2, True))
    few = rois[: threaded.MIN_ROIS_PER_THREAD]  # one chunk's worth: torchvision's call itself
    out = threaded.roi_align(features.requires_grad_(), few, (5, 5), 0.25, 2, True)
    assert "Chunked" not in type(out.grad_fn).__name__


def test_workers_run_in_the_callers_grad_and_inference_mode_and_raise_to_it():
    def modes(_):
        return torch.is_inference_mode_enabled(), torch.is_grad_enabled(), threaded.thread_count(torch.device("cpu"))

    with torch.inference_mode():
        assert threaded.run_parallel(modes, [0, 1]) == [(True, False, 1)] * 2  # no nesting inside the pool
    with torch.no_grad():
        assert threaded.run_parallel(modes, [0, 1]) == [(False, False, 1)] * 2
    assert threaded.run_parallel(modes, [0, 1]) == [(False, True, 1)] * 2

    def boom(i):
        raise ValueError(f"item {i}")

    with pytest.raises(ValueError, match="item"):
        threaded.run_parallel(boom, [0, 1])


def test_at_most_max_chunks(monkeypatch):
    monkeypatch.setattr(threaded, "thread_count", lambda device: 64)
    g = torch.Generator().manual_seed(2)
    rois = random_rois(g, 64 * threaded.MIN_ROIS_PER_THREAD, 1, 50.0)
    calls = []
    chunked = threaded._ChunkedRoIAlign.apply
    monkeypatch.setattr(threaded._ChunkedRoIAlign, "apply", lambda *a: calls.append(a[-1]) or chunked(*a))
    threaded.roi_align(torch.randn(1, 2, 8, 8, generator=g), rois, (2, 2), 0.25, 1, True)
    assert calls == [threaded.MAX_CHUNKS]


@pytest.mark.parametrize("groups", [1, 7, 40])
def test_batched_nms_equals_torchvision(three_threads, groups):
    g = torch.Generator().manual_seed(groups)
    n = 3000
    xy = torch.rand(n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 4], dim=1)
    scores = torch.randperm(n, generator=g).float()  # distinct: no ties to order
    idxs = torch.randint(0, groups, (n,), generator=g)
    ours = threaded.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(ours, ops.batched_nms(boxes, scores, idxs, 0.5))


def test_thread_count_is_one_while_tracing_and_off_the_cpu():
    assert threaded.thread_count(torch.device("cpu")) == torch.get_num_threads()
    assert threaded.thread_count(torch.device("meta")) == 1
    seen = []

    def f(x):
        seen.append(threaded.thread_count(x.device))
        return x + 1

    torch.jit.trace(f, torch.zeros(1), check_trace=False)
    assert seen == [1]


def test_the_pool_is_dropped_in_a_forked_child():
    """A forked child (a DataLoader worker) starts without the parent's pool and lock, and makes its own."""
    import os

    threaded.run_parallel(lambda x: x, [1, 2])
    assert threaded._pool is not None
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if the pool was dropped and a new one works
        ok = threaded._pool is None and not threaded._pool_lock.locked() and threaded.run_parallel(lambda x: 2 * x, [1, 2]) == [2, 4]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
