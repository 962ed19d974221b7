"""torchvision's Faster R-CNN as configured by frcnn.benchmarks.peers: the settings and weights it takes from ours."""

import pytest
import torch

from frcnn.benchmarks.peers import PeerAdapter, torchvision_peer
from tests.conftest import small_model
from tests.modeling.test_model import batch


def test_peer_takes_our_settings():
    model = small_model(overrides=["model.roi_heads.batch_size_per_image=64", "model.rpn.pre_nms_topk_test=1000"])
    peer = torchvision_peer(model)
    rpn, heads = peer.rpn, peer.roi_heads
    assert rpn._pre_nms_top_n == {"training": 6000, "testing": 1000}
    assert rpn._post_nms_top_n == {"training": 2000, "testing": 300}
    assert rpn.nms_thresh == 0.7
    assert (rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold) == (0.7, 0.3)
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (256, 0.5)
    assert rpn.anchor_generator.num_anchors_per_location() == [9]
    assert (heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction) == (64, 0.25)
    assert heads.proposal_matcher.high_threshold == 0.5
    assert heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.05, 0.5, 100)
    assert heads.box_roi_pool.output_size == (model.roi_heads.pooler_resolution,) * 2
    assert peer.transform.min_size[-1] == model.preprocessor.min_size_test
    assert peer.transform.max_size == model.preprocessor.max_size
    assert peer.transform.image_mean == pytest.approx(model.preprocessor.mean.flatten().tolist())


def test_peer_starts_from_a_copy_of_our_weights():
    torch.manual_seed(0)
    model = small_model()
    peer = torchvision_peer(model)
    ours = dict(model.backbone.trunk.named_parameters())
    for name, p in peer.backbone.body.named_parameters():
        assert torch.equal(p, ours[name]) and p is not ours[name]
    assert torch.equal(peer.roi_heads.box_predictor.bbox_pred.weight, model.roi_heads.predictor.bbox_pred.weight)
    feats = torch.randn(1, model.backbone.out_channels, 6, 8)
    logits, _ = model.rpn.head(feats)  # [1, Hf*Wf*A] in (y, x, a) order
    tv_logits, _ = peer.rpn.head([feats])  # [[1, A, Hf, Wf]]
    assert torch.allclose(tv_logits[0].permute(0, 2, 3, 1).reshape(1, -1), logits, atol=1e-6)
    peer.backbone.body[0][0].weight.data.add_(1.0)  # training the peer leaves ours alone
    assert not torch.equal(peer.backbone.body[0][0].weight, model.backbone.trunk[0][0].weight)


def test_adapter_gives_losses_in_training_and_detections_in_eval():
    torch.manual_seed(0)
    # Few proposals and RoIs: res5 over the paper's 2 x 512 sampled RoIs is seconds of CPU per step.
    few_rois = ["model.rpn.post_nms_topk_train=100", "model.rpn.post_nms_topk_test=50", "model.roi_heads.batch_size_per_image=32"]
    peer = PeerAdapter(torchvision_peer(small_model(overrides=few_rois)))
    images, targets = batch(torch.device("cpu"))
    out = peer.train()(images, targets)
    assert set(out.losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()
    with torch.no_grad():
        dets = peer.eval()(images).detections
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}
    with pytest.raises(ValueError, match="needs targets"):
        peer.train()(images)


def test_roi_max_pooling_has_no_peer():
    with pytest.raises(ValueError, match="RoI max pooling"):
        torchvision_peer(small_model(overrides=["model.roi_heads.pooler=pool"]))


def test_peer_tests_at_our_test_size_under_multi_scale_training():
    model = small_model(overrides=["data.min_size_train=[96,128,112]", "data.min_size_test=128"])
    assert torchvision_peer(model).transform.min_size == (96, 112, 128)
    with pytest.raises(ValueError, match="test size 144 is not among"):
        torchvision_peer(small_model(overrides=["data.min_size_train=[96,128]", "data.min_size_test=144"]))


def test_fpn_peer_shares_our_pyramid_levels_and_pooling():
    torch.manual_seed(0)
    overrides = ["model/backbone=r18_fpn", "model.roi_heads.aligned=false", "model.rpn.post_nms_topk_train=100",
                 "model.roi_heads.batch_size_per_image=32"]
    model = small_model(overrides=overrides).eval()
    peer = torchvision_peer(model).eval()
    assert peer.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    assert peer.rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}  # per level, as ours
    assert peer.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]  # P2-P5, not 'pool' (P6)
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = peer.backbone(x)
        assert list(theirs) == ["0", "1", "2", "3", "pool"]
        for a, b in zip(ours.maps, theirs.values()):
            assert torch.equal(a, b)
        boxes = [torch.tensor([[4.0, 4.0, 30.0, 30.0], [10.0, 8.0, 150.0, 120.0]]), torch.tensor([[0.0, 0.0, 64.0, 90.0]])]
        pooled = peer.roi_heads.box_roi_pool(theirs, boxes, [(128, 160)] * 2)
        padded = torch.stack([torch.cat([b, b[:1].expand(2 - len(b), 4)]) for b in boxes])  # [2, 2, 4]
        logits, _ = model.predict_rois(ours, padded)
        features = peer.roi_heads.box_head(pooled)
        tv_logits, _ = peer.roi_heads.box_predictor(features)
    torch.testing.assert_close(logits[0], tv_logits[:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1, :1], tv_logits[2:], rtol=1e-5, atol=1e-5)
    images, targets = batch(torch.device("cpu"))
    losses = PeerAdapter(peer).train()(images, targets).losses
    assert all(torch.isfinite(v) for v in losses.values())
