"""Assigners, Matcher and ATSS losses against the original's recorded targets and independent oracles."""
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision

from atss_core.config import cfg
from atss_core.modeling.matcher import Matcher
from atss_core.modeling.rpn.anchor_generator import make_anchor_generator_atss
from atss_core.modeling.rpn.atss import assigners, loss as loss_module
from atss_core.modeling.rpn.atss.assigners import (
    ATSSAssigner, IoUAssigner, SSCAssigner, TopKAssigner, build_assigner)
from atss_core.structures.boxlist_ops import box_iou_plus_one
from atss_core.modeling.rpn.atss.box_coder import BoxCoder
from atss_core.modeling.rpn.atss.loss import make_atss_loss_evaluator
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.boxlist_ops import boxlist_iou
from atss_core.modeling.detector.generalized_rcnn import check_targets
from conftest import DEVICES, load_golden

POSITIVE_TYPES = ["ATSS", "SSC", "IoU", "TOPK"]
# Anchors per level of the golden 320 x 416 grid (40x52, 20x26, 10x13, 5x7, 3x4).
GOLDEN_LEVEL_SIZES = [2080, 520, 130, 35, 12]


def _cfg(*overrides):
    config = cfg.clone()
    config.merge_from_list(list(overrides))
    return config


def _type_cfg(positive_type, regression_type="BOX"):
    return _cfg("MODEL.ATSS.POSITIVE_TYPE", positive_type, "MODEL.ATSS.REGRESSION_TYPE", regression_type)


def _boxlist(boxes, size_wh, labels):
    boxlist = BoxList(boxes, size_wh)
    boxlist.add_field("labels", labels)
    return boxlist


def _golden_anchors_per_level():
    return list(load_golden("assign_targets.pt")["anchors"].split(GOLDEN_LEVEL_SIZES))


# ---------------------------------------------------------------------------- golden assignment
SCENARIOS = ["typical", "crowded", "tiny", "huge", "duplicate", "border"]
RUN_IDS = [f"{scenario}/{positive_type}/{regression_type}" for scenario in SCENARIOS
           for positive_type in POSITIVE_TYPES for regression_type in ["BOX", "POINT"]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("run_id", RUN_IDS)
def test_assignment_matches_original(run_id, device):
    golden = load_golden("assign_targets.pt")
    scenario, positive_type, regression_type = run_id.split("/")
    config = _type_cfg(positive_type, regression_type)
    gt = golden["scenarios"][scenario]
    anchors = golden["anchors"].to(device)
    result = build_assigner(config)(anchors, gt["bbox"].to(device), gt["labels"].to(device),
                                    GOLDEN_LEVEL_SIZES)
    expected = golden["runs"][run_id]
    assert torch.equal(result.labels.cpu(), expected["labels"].long())
    positive = result.labels.cpu() > 0
    assert torch.equal(result.matched_gt_inds.cpu() >= 0, positive)
    matched_boxes = gt["bbox"][result.matched_gt_inds.cpu()[positive]]
    reg_targets = BoxCoder.from_config(config).encode(matched_boxes, anchors.cpu()[positive])
    torch.testing.assert_close(reg_targets, expected["reg_targets"][positive], rtol=0, atol=1e-4)


@pytest.mark.parametrize("positive_type", POSITIVE_TYPES)
def test_zero_gts_make_every_anchor_background(positive_type):
    golden = load_golden("assign_targets.pt")
    assert f"empty/{positive_type}/BOX" in golden["errors"]  # the original raised here
    empty = golden["scenarios"]["empty"]
    result = build_assigner(_type_cfg(positive_type))(golden["anchors"], empty["bbox"], empty["labels"],
                                                      GOLDEN_LEVEL_SIZES)
    assert result.labels.shape == (2777,) and not result.labels.any()
    assert bool((result.matched_gt_inds == -1).all())


@pytest.mark.parametrize("positive_type", POSITIVE_TYPES)
def test_zero_anchors_give_an_empty_result(positive_type):
    """An image without anchors (e.g. a config with no level) yields (0,) labels and matches, as
    for zero GTs, for every positive type."""
    gt_boxes, gt_labels = torch.tensor([[10.0, 10.0, 50.0, 60.0]]), torch.tensor([3])
    result = build_assigner(_type_cfg(positive_type))(torch.zeros(0, 4), gt_boxes, gt_labels)
    assert result.labels.shape == result.matched_gt_inds.shape == (0,)
    assert result.labels.dtype == result.matched_gt_inds.dtype == torch.int64


def test_two_images_through_prepare_targets():
    golden = load_golden("assign_targets.pt")["two_images"]
    evaluator = make_atss_loss_evaluator(cfg, BoxCoder.from_config(cfg))
    sizes_wh = [(w, h) for h, w in golden["image_sizes_hw"]]
    targets = [_boxlist(b, size, l) for b, size, l in zip(golden["bbox"], sizes_wh, golden["labels_gt"])]
    labels, reg_targets = evaluator.prepare_targets(targets, _golden_anchors_per_level())
    assert [int((l > 0).sum()) for l in labels] == [41, 36]
    for ours, ours_reg, theirs, theirs_reg in zip(labels, reg_targets, golden["labels"],
                                                  golden["reg_targets"]):
        assert torch.equal(ours, theirs)
        torch.testing.assert_close(ours_reg[ours > 0], theirs_reg[theirs > 0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_atss_statistics_per_gt(scenario):
    golden = load_golden("assign_targets.pt")
    expected = load_golden("assign_targets.json")["atss_diagnostics"][scenario]
    stats = ATSSAssigner(topk=9).select_candidates(golden["anchors"], golden["scenarios"][scenario]["bbox"],
                                                   GOLDEN_LEVEL_SIZES)
    num_gt = len(golden["scenarios"][scenario]["bbox"])
    assert stats.candidate_inds.shape == (num_gt, 45)  # 9 per level on all 5 levels
    for ours, key in [(stats.iou_mean, "iou_mean_per_gt"), (stats.iou_std, "iou_std_per_gt_unbiased"),
                      (stats.iou_threshold, "iou_thresh_per_gt")]:
        torch.testing.assert_close(ours, torch.tensor(expected[key]), rtol=0, atol=1e-6)
    # The statistics are those of the reported candidates: unbiased std, threshold = mean + std.
    torch.testing.assert_close(stats.iou_std, stats.candidate_ious.double().std(dim=1).float(),
                               rtol=1e-5, atol=1e-7)
    # Every positive the assigner keeps is a positive candidate of its GT.
    result = ATSSAssigner(topk=9)(golden["anchors"], golden["scenarios"][scenario]["bbox"],
                                  golden["scenarios"][scenario]["labels"], GOLDEN_LEVEL_SIZES)
    positives = (result.matched_gt_inds >= 0).nonzero().squeeze(1)
    gt_of = result.matched_gt_inds[positives]
    hits = (stats.candidate_inds[gt_of] == positives[:, None]) & stats.is_positive[gt_of]
    assert bool(hits.any(dim=1).all())


def test_duplicate_gts_go_to_the_lowest_index():
    golden = load_golden("assign_targets.pt")
    scenario = golden["scenarios"]["duplicate"]
    assert torch.equal(scenario["bbox"][0], scenario["bbox"][1]) and scenario["labels"][:2].tolist() == [3, 7]
    for positive_type in POSITIVE_TYPES:
        assigner = build_assigner(_type_cfg(positive_type))
        result = assigner(golden["anchors"], scenario["bbox"], scenario["labels"], GOLDEN_LEVEL_SIZES)
        assert (result.labels == 3).any() and not (result.labels == 7).any(), positive_type


# ---------------------------------------------------------------------------- independent oracles
def _reference_atss(anchors, level_sizes, gt_boxes, topk, per_location):
    """Loop-per-GT ATSS straight from the paper, float64, torchvision IoU: (N,) matched GT or -1."""
    shift = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # "+1" areas via shifted corners
    ious = torchvision.ops.box_iou(anchors.double() + shift, gt_boxes.double() + shift)  # (N, G)
    centres = (anchors[:, :2] + anchors[:, 2:]).double() / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]).double() / 2
    distances = torch.cdist(centres, gt_centres)
    best = torch.full((len(anchors),), -1.0, dtype=torch.float64)
    matched = torch.full((len(anchors),), -1, dtype=torch.int64)
    for g in range(len(gt_boxes)):
        candidates, start = [], 0
        for size in level_sizes:
            order = distances[start:start + size, g].argsort()
            candidates.append(order[:min(topk * per_location, size)] + start)
            start += size
        candidates = torch.cat(candidates)
        threshold = ious[candidates, g].mean() + ious[candidates, g].std()
        x1, y1, x2, y2 = gt_boxes[g].double()
        for a in candidates.tolist():
            cx, cy = centres[a]
            inside = min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01
            if ious[a, g] >= threshold and inside and ious[a, g] > best[a]:
                best[a], matched[a] = ious[a, g], g
    return matched


def test_atss_matches_a_loop_reference_with_several_anchors_per_location():
    config = _cfg("MODEL.ATSS.ASPECT_RATIOS", (0.5, 1.0, 2.0), "MODEL.ATSS.TOPK", 5)
    generator = make_anchor_generator_atss(config)
    levels = generator.grid_anchors([(20, 24), (10, 12), (5, 6), (3, 3), (2, 2)])
    anchors = torch.cat(levels).double()
    sizes = [len(level) for level in levels]
    rng = torch.Generator().manual_seed(3)
    corner = torch.rand(25, 2, generator=rng, dtype=torch.float64) * 150
    gt = torch.cat([corner, corner + 6 + torch.rand(25, 2, generator=rng, dtype=torch.float64) * 120], dim=1)
    labels = torch.randint(1, 81, (25,), generator=rng)
    assigner = build_assigner(config)
    assert (assigner.topk, assigner.num_anchors_per_location) == (5, 3)
    result = assigner(anchors, gt, labels, sizes)
    expected = _reference_atss(anchors, sizes, gt, topk=5, per_location=3)
    assert int((expected >= 0).sum()) > 50
    assert torch.equal(result.matched_gt_inds, expected)
    assert torch.equal(result.labels, torch.where(expected >= 0, labels[expected.clamp(min=0)], 0))


@pytest.mark.parametrize("device", DEVICES)
def test_iou_plus_one_against_torchvision_and_boxlist_iou(device):
    rng = torch.Generator().manual_seed(0)
    corner = torch.rand(30, 2, generator=rng) * 50
    boxes = torch.cat([corner, corner + torch.rand(30, 2, generator=rng) * 40], 1)
    shift = torch.tensor([0.0, 0.0, 1.0, 1.0])
    ours = box_iou_plus_one(boxes[:, None].to(device), boxes[None, :20].to(device)).cpu()
    torch.testing.assert_close(ours, torchvision.ops.box_iou(boxes + shift, boxes[:20] + shift),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(ours, boxlist_iou(BoxList(boxes, (100, 100)), BoxList(boxes[:20], (100, 100))))
    paired = box_iou_plus_one(boxes[:20], boxes[10:30])
    assert torch.equal(paired, ours[torch.arange(10, 30), torch.arange(20)])


@pytest.mark.parametrize("scenario", ["crowded", "duplicate"])
@pytest.mark.parametrize("positive_type", POSITIVE_TYPES)
def test_blocked_computation_changes_nothing(positive_type, scenario, monkeypatch):
    golden = load_golden("assign_targets.pt")
    gt = golden["scenarios"][scenario]
    args = (golden["anchors"], gt["bbox"], gt["labels"], GOLDEN_LEVEL_SIZES)
    whole = build_assigner(_type_cfg(positive_type))(*args)
    # 1 GT per block over all anchors or P3, 7 on P4: the duplicate GTs land in different blocks.
    monkeypatch.setattr(assigners, "MAX_PAIRS_PER_BLOCK", 4096)
    blocked = build_assigner(_type_cfg(positive_type))(*args)
    assert torch.equal(blocked.labels, whole.labels)
    assert torch.equal(blocked.matched_gt_inds, whole.matched_gt_inds)


def test_anchors_as_a_list_of_levels():
    golden = load_golden("assign_targets.pt")
    typical = golden["scenarios"]["typical"]
    levels = list(golden["anchors"].split(GOLDEN_LEVEL_SIZES))
    from_list = ATSSAssigner()(levels, typical["bbox"], typical["labels"])
    assert torch.equal(from_list.labels, golden["runs"]["typical/ATSS/BOX"]["labels"])


def test_centre_inside_needs_a_margin_of_0_01():
    box = torch.tensor([3.995, 0.0, 10.0, 10.0])
    assert not assigners.centre_inside(torch.tensor(4.0), torch.tensor(4.0), box)  # 0.005 from the left side
    assert assigners.centre_inside(torch.tensor(4.0), torch.tensor(4.0), box - torch.tensor([0.01, 0, 0, 0]))


def test_matcher_thresholds_and_low_quality_matches():
    quality = torch.tensor([[0.90, 0.45, 0.10, 0.30],
                            [0.20, 0.30, 0.35, 0.30]])
    # pred 0: 0.9 -> GT 0; pred 1: 0.45 in [0.4, 0.5) -> ignored; pred 2: 0.35 -> background;
    # pred 3: tie 0.3 -> GT 0, below 0.4 -> background.
    assert Matcher(0.5, 0.4)(quality).tolist() == [0, -2, -1, -1]
    # GT 1's best prediction (2) is kept as a low-quality match.
    assert Matcher(0.5, 0.4, True)(quality).tolist() == [0, -2, 1, -1]
    # A low-quality match goes to the prediction's own best GT: GT 1 ends up with nothing.
    assert Matcher(0.5, 0.4, True)(torch.tensor([[0.35, 0.1], [0.3, 0.05]])).tolist() == [0, -1]
    assert Matcher(0.5, 0.4, True)(torch.zeros(0, 3)).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.4, 0.5)


def test_iou_assigner_ignores_positives_whose_centre_is_outside():
    anchors = torch.tensor([[0.0, 0.0, 9.0, 9.0], [20.0, 0.0, 29.0, 9.0], [40.0, 40.0, 49.0, 49.0]])
    # GT 0 equals anchor 0 (IoU 1). GT 1 covers the left half of anchor 1 (IoU 0.5 with "+1" areas)
    # but not its centre (24.5): positive by IoU, then ignored.
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [20.0, 0.0, 24.0, 9.0]])
    result = IoUAssigner(0.5, 0.4)(anchors, gt, torch.tensor([2, 5]))
    assert result.labels.tolist() == [2, -1, 0]
    assert result.matched_gt_inds.tolist() == [0, -1, -1]


def test_ssc_picks_the_smallest_gt_within_the_level_range():
    # One level, range [0, 64]: the anchor centre (16, 16) lies in both GTs; the smaller wins.
    anchors = torch.tensor([[0.0, 0.0, 32.0, 32.0], [200.0, 200.0, 232.0, 232.0]])
    gt = torch.tensor([[0.0, 0.0, 60.0, 60.0], [8.0, 8.0, 30.0, 30.0], [150.0, 150.0, 500.0, 500.0]])
    result = SSCAssigner(sizes_of_interest=((0, 64),))(anchors, gt, torch.tensor([1, 2, 3]), [2])
    # Anchor 1 is inside GT 2 but max(l, t, r, b) = 284 is out of range.
    assert result.labels.tolist() == [2, 0]
    with pytest.raises(ValueError, match="levels"):
        SSCAssigner()(anchors, gt, torch.tensor([1, 2, 3]), [1, 1])


def test_topk_keeps_at_most_k_per_gt():
    golden = load_golden("assign_targets.pt")
    huge = golden["scenarios"]["huge"]
    result = TopKAssigner(topk=4)(golden["anchors"], huge["bbox"], huge["labels"])
    assert 0 < int((result.labels > 0).sum()) <= 4


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[10.0, 10.0, 5.0, 20.0]]), "x2 < x1"),
    (torch.tensor([[10.0, 10.0, float("nan"), 20.0]]), "not finite"),
    (torch.tensor([10.0, 10.0, 5.0, 20.0]), "shape"),
])
def test_malformed_gt_boxes_are_reported(bad, message):
    with pytest.raises(ValueError, match=message):
        ATSSAssigner()(torch.zeros(4, 4), bad, torch.tensor([1]), [4])


def test_other_input_errors_are_reported():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(ValueError, match="labels must be class ids"):
        ATSSAssigner()(torch.zeros(4, 4), boxes, torch.tensor([0]), [4])
    with pytest.raises(ValueError, match="num_anchors_per_level"):
        ATSSAssigner()(torch.zeros(4, 4), boxes, torch.tensor([1]), [3])
    with pytest.raises(ValueError, match="POSITIVE_TYPE"):
        build_assigner(_type_cfg("FCOS"))


def test_gts_without_positives_are_logged(caplog):
    golden = load_golden("assign_targets.pt")
    # Anchor centres sit at 4 + 8i: a box from 5 to 10 contains none, so it gets no positive.
    gt = torch.tensor([[5.0, 5.0, 10.0, 10.0], [40.0, 20.0, 280.0, 230.0]])
    with caplog.at_level(logging.DEBUG, logger=assigners.__name__):
        result = ATSSAssigner()(golden["anchors"], gt, torch.tensor([1, 2]), GOLDEN_LEVEL_SIZES)
    assert set(result.labels.unique().tolist()) == {0, 2}
    assert "1 of 2 GT boxes got no positive anchor" in caplog.text


# ---------------------------------------------------------------------------- losses
@pytest.mark.parametrize("regression_type", ["BOX", "POINT"])
def test_giou_and_centerness_targets_match_original(regression_type):
    golden = load_golden("components.pt")
    case, anchors = golden["giou"][regression_type], golden["box_coder"]["anchors"]
    config = _cfg("MODEL.ATSS.REGRESSION_TYPE", regression_type)
    evaluator = make_atss_loss_evaluator(config, BoxCoder.from_config(config))
    centerness = evaluator.compute_centerness_targets(case["target"], anchors)
    torch.testing.assert_close(centerness, case["centerness_targets"], rtol=1e-5, atol=1e-6)
    for weight, key in [(case["centerness_targets"], "loss_weighted"), (None, "loss_unweighted"),
                        (torch.zeros(64), "loss_zero_weight_sum")]:
        loss = evaluator.GIoULoss(case["pred"], case["target"], anchors, weight=weight)
        torch.testing.assert_close(loss, case[key], rtol=1e-5, atol=0)


def test_giou_of_degenerate_boxes_stays_finite():
    config = _cfg("MODEL.ATSS.REGRESSION_TYPE", "POINT")
    evaluator = make_atss_loss_evaluator(config, BoxCoder.from_config(config))
    anchors = torch.tensor([[-27.5, -27.5, 35.5, 35.5]])
    # Zero distances decode to the point (4, 4) for both: IoU 0 / eps, enclosing eps -> loss 1.
    loss = evaluator.GIoULoss(torch.zeros(1, 4), torch.zeros(1, 4), anchors)
    assert loss.item() == pytest.approx(1.0)


def test_focal_loss_is_wired_with_gamma_then_alpha():
    golden = load_golden("components.pt")["focal"]
    evaluator = make_atss_loss_evaluator(cfg, BoxCoder.from_config(cfg))
    logits = golden["logits"].clone().requires_grad_()
    loss = evaluator.cls_loss_func(logits, golden["targets_int32"])
    torch.testing.assert_close(loss, golden["loss_sum"], rtol=1e-4, atol=0)
    loss.backward()
    torch.testing.assert_close(logits.grad, golden["grad_logits"], rtol=1e-3, atol=1e-6)


def test_losses_on_the_recorded_r50_head_outputs():
    """Stored head outputs + targets -> the original's three losses (train and eval heads agree:
    FrozenBN and GroupNorm behave the same in both modes)."""
    outputs = load_golden("model_eval_R50.pt")
    train = load_golden("model_train_R50.pt")
    evaluator = make_atss_loss_evaluator(cfg, BoxCoder.from_config(cfg))
    targets = [_boxlist(t["bbox"], tuple(int(v) for v in t["size_wh"]), t["labels"])
               for t in train["targets"]]
    anchors = list(outputs["anchors"][0])  # the images' anchors are the same: one list of levels
    assert all(torch.equal(a, b) for per_image in outputs["anchors"] for a, b in zip(per_image, anchors))
    labels, reg_targets = evaluator.prepare_targets(targets, anchors)
    for ours, ours_reg, theirs, theirs_reg in zip(labels, reg_targets, train["labels_per_anchor"],
                                                  train["reg_targets_per_anchor"]):
        assert torch.equal(ours, theirs)
        torch.testing.assert_close(ours_reg[ours > 0], theirs_reg[theirs > 0], rtol=0, atol=1e-4)
    losses = evaluator(outputs["box_cls"], outputs["box_regression"], outputs["centerness"], targets, anchors)
    for ours, name in zip(losses, ["loss_cls", "loss_reg", "loss_centerness"]):
        torch.testing.assert_close(ours, train["losses"][name], rtol=1e-4, atol=0)


def _small_batch(config, regression_type, device="cpu", with_gts=True):
    """Two images on a 128 x 128 padded grid, random head outputs (A = 1, C = 4)."""
    generator = make_anchor_generator_atss(config).to(device)
    sizes_hw = [(100, 120), (90, 128)]
    grids = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    anchors = generator([torch.zeros(2, 1, h, w) for h, w in grids])
    boxes = [torch.tensor([[10.0, 20.0, 60.0, 80.0], [50.0, 40.0, 110.0, 95.0]]),
             torch.tensor([[30.0, 30.0, 100.0, 70.0]])]
    labels = [torch.tensor([1, 3]), torch.tensor([4])]
    if not with_gts:
        boxes, labels = [b[:0] for b in boxes], [l[:0] for l in labels]
    targets = [_boxlist(b.to(device), (w, h), l.to(device)) for b, l, (h, w) in zip(boxes, labels, sizes_hw)]
    rng = torch.Generator().manual_seed(7)

    def head(channels, make):
        return [make((2, channels, h, w)).to(device).requires_grad_() for h, w in grids]
    box_cls = head(4, lambda shape: torch.randn(shape, generator=rng) - 2)
    if regression_type == "BOX":
        box_regression = head(4, lambda shape: torch.randn(shape, generator=rng) * 0.2)
    else:
        box_regression = head(4, lambda shape: 0.5 + torch.rand(shape, generator=rng) * 3)
    centerness = head(1, lambda shape: torch.randn(shape, generator=rng))
    return box_cls, box_regression, centerness, targets, anchors


def _flatten(levels):
    """list over levels of (2, K, H, W) -> (2 * sum HW, K), image-major, the oracle's way (A = 1)."""
    return torch.cat([torch.cat([x[i].permute(1, 2, 0).reshape(-1, x.shape[1]) for x in levels])
                      for i in range(2)])


def _oracle_losses(evaluator, box_cls, box_regression, centerness, targets, anchors):
    labels, gt_boxes = [], []
    image_anchors = torch.cat(anchors)
    for target in targets:
        result = evaluator.assigner(image_anchors, target.bbox, target.get_field("labels"),
                                    [len(level) for level in anchors])
        labels.append(result.labels)
        gt_boxes.append(target.bbox[result.matched_gt_inds.clamp(min=0)] if len(target) else image_anchors)
    labels, gt_boxes = torch.cat(labels), torch.cat(gt_boxes)
    anchor_boxes = image_anchors.repeat(len(targets), 1)
    logits, regression, ctr_logits = _flatten(box_cls), _flatten(box_regression), _flatten(centerness)[:, 0]
    valid, positive = labels >= 0, labels > 0
    num_pos = max(int(positive.sum()), 1)
    one_hot = F.one_hot(labels.clamp(min=0), 5)[:, 1:].to(logits.dtype)
    cls = torchvision.ops.sigmoid_focal_loss(logits[valid], one_hot[valid], alpha=0.25, gamma=2.0,
                                             reduction="sum") / num_pos
    pred = evaluator.box_coder.decode(regression[positive], anchor_boxes[positive])
    gt = gt_boxes[positive]
    cx, cy = ((anchor_boxes[positive, :2] + anchor_boxes[positive, 2:]) / 2).unbind(1)
    lr = torch.stack([cx - gt[:, 0], gt[:, 2] - cx], 1)
    tb = torch.stack([cy - gt[:, 1], gt[:, 3] - cy], 1)
    ctr_target = ((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values)).sqrt()
    giou = torchvision.ops.generalized_box_iou_loss(pred, gt, reduction="none", eps=1e-7)
    reg = (giou * ctr_target).sum() / ctr_target.sum() * 2.0
    ctr = F.binary_cross_entropy_with_logits(ctr_logits[positive], ctr_target, reduction="sum") / num_pos
    return cls, reg, ctr, int(positive.sum())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("positive_type, regression_type",
                         [("ATSS", "BOX"), ("ATSS", "POINT"), ("IoU", "BOX")])
def test_losses_against_torchvision_oracles(positive_type, regression_type, device):
    config = _type_cfg(positive_type, regression_type)
    evaluator = make_atss_loss_evaluator(config, BoxCoder.from_config(config))
    batch = _small_batch(config, regression_type, device)
    expected_cls, expected_reg, expected_ctr, num_pos = _oracle_losses(evaluator, *batch)
    assert num_pos >= 10
    cls, reg, ctr = evaluator(*batch)
    torch.testing.assert_close(cls, expected_cls, rtol=1e-5, atol=0)
    torch.testing.assert_close(reg, expected_reg, rtol=1e-4, atol=0)
    torch.testing.assert_close(ctr, expected_ctr, rtol=1e-4, atol=0)


@pytest.mark.parametrize("low_precision", [torch.bfloat16, torch.float16])
def test_losses_are_float32_under_mixed_precision(low_precision):
    """Under autocast the head emits low-precision maps; the losses upcast them and run in
    float32, equal to the float32 losses of the same (rounded) head outputs."""
    box_cls, box_regression, centerness, targets, anchors = _small_batch(cfg, "BOX")
    rounded = [[x.detach().to(low_precision) for x in maps] for maps in (box_cls, box_regression, centerness)]
    evaluator = make_atss_loss_evaluator(cfg, BoxCoder.from_config(cfg))
    expected = evaluator(*[[x.float() for x in maps] for maps in rounded], targets, anchors)
    with torch.autocast("cpu", dtype=low_precision):
        losses = evaluator(*rounded, targets, anchors)
    for loss, want in zip(losses, expected):
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, want, rtol=0, atol=0)


def test_no_positives_gives_zero_losses_that_stay_in_the_graph():
    box_cls, box_regression, centerness, targets, anchors = _small_batch(cfg, "BOX", with_gts=False)
    evaluator = make_atss_loss_evaluator(cfg, BoxCoder.from_config(cfg))
    cls, reg, ctr = evaluator(box_cls, box_regression, centerness, targets, anchors)
    expected_cls = torchvision.ops.sigmoid_focal_loss(
        _flatten(box_cls), torch.zeros_like(_flatten(box_cls)), alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(cls, expected_cls, rtol=1e-5, atol=0)  # num_pos clamps to 1
    assert reg.item() == 0 and ctr.item() == 0 and reg.requires_grad and ctr.requires_grad
    (cls + reg + ctr).backward()
    assert all(x.grad is not None and not x.grad.any() for x in box_regression + centerness)


@pytest.mark.parametrize("with_gts", [True, False])
def test_normalisation_over_processes(with_gts, monkeypatch):
    """Two fake ranks: the other one adds 10 positives and a centerness-target sum of 7.5."""
    box_cls, box_regression, centerness, targets, anchors = _small_batch(cfg, "BOX", with_gts=with_gts)
    evaluator = make_atss_loss_evaluator(cfg, BoxCoder.from_config(cfg))
    alone = evaluator(box_cls, box_regression, centerness, targets, anchors)
    reduced = []

    def fake_reduce_sum(tensor):
        reduced.append(tensor.detach().clone())
        return tensor + (10.0 if len(reduced) == 1 else 7.5)
    monkeypatch.setattr(loss_module, "get_world_size", lambda: 2)
    monkeypatch.setattr(loss_module, "reduce_sum", fake_reduce_sum)
    cls, reg, ctr = evaluator(box_cls, box_regression, centerness, targets, anchors)
    assert len(reduced) == 2  # both all-reduces run, positives or not
    num_pos, centerness_sum = reduced[0].item(), reduced[1].item()
    assert (num_pos > 0) == with_gts
    torch.testing.assert_close(cls, alone[0] * max(num_pos, 1) / ((num_pos + 10) / 2), rtol=1e-6, atol=0)
    if with_gts:
        torch.testing.assert_close(reg, alone[1] * centerness_sum / ((centerness_sum + 7.5) / 2),
                                   rtol=1e-6, atol=0)
        torch.testing.assert_close(ctr, alone[2] * num_pos / ((num_pos + 10) / 2), rtol=1e-6, atol=0)
    else:
        assert reg.item() == 0 and ctr.item() == 0


def test_target_size_mismatch_is_reported():
    _, _, _, targets, _ = _small_batch(cfg, "BOX")
    check_targets(targets, [(100, 120), (90, 128)], num_classes=5)  # the batch's unpadded sizes: fine
    targets[0] = _boxlist(targets[0].bbox, (128, 128), targets[0].get_field("labels"))  # padded size
    with pytest.raises(ValueError, match=r"target 0 has BoxList size \(128, 128\) but its image's unpadded "
                                         r"\(width, height\) is \(120, 100\)"):
        check_targets(targets, [(100, 120), (90, 128)], num_classes=5)
