"""ATSS head and post-processor, checked on their own (no backbone).

Oracles: the golden head outputs / detections recorded from the original (model_eval_R50.pt,
components.pt), and small hand-computed cases for the score threshold, class-aware "+1" NMS and
the per-image cap.
"""
import math

import pytest
import torch
from torch import nn

from atss_core.config import cfg as default_cfg
from atss_core.modeling.rpn.atss.atss import ATSSHead, BoxCoder
from atss_core.modeling.rpn.atss.inference import ATSSPostProcessor, make_atss_postprocessor
from conftest import DEVICES, load_golden, weightfill


@pytest.fixture(autouse=True)
def ieee_fp32_convs():
    """cuDNN runs float32 convs in TF32 by default, which is far outside the golden tolerances."""
    conv = torch.backends.cudnn.conv
    saved, conv.fp32_precision = conv.fp32_precision, "ieee"
    yield
    conv.fp32_precision = saved


def atss_cfg(*options):
    cfg = default_cfg.clone()
    cfg.merge_from_list(["MODEL.ATSS_ON", True, "MODEL.RPN_ONLY", True, *options])
    cfg.freeze()
    return cfg


def assert_same_detections(ours, expected, box_atol, score_atol):
    """``ours`` (BoxList) holds the same detections as ``expected`` ({bbox, scores, labels}), in
    any order: a one-to-one match with equal labels and boxes / scores within the tolerances."""
    boxes, scores, labels = ours.bbox.cpu(), ours.get_field("scores").cpu(), ours.get_field("labels").cpu()
    assert labels.dtype == torch.int64
    assert len(boxes) == len(expected["bbox"]), (len(boxes), len(expected["bbox"]))
    if len(boxes) == 0:
        return
    match = ((labels[:, None] == expected["labels"][None])
             & ((boxes[:, None] - expected["bbox"][None]).abs().amax(-1) <= box_atol)
             & ((scores[:, None] - expected["scores"][None]).abs() <= score_atol))
    assert (match.sum(0) == 1).all() and (match.sum(1) == 1).all(), (
        f"{int((match.sum(1) == 0).sum())} of ours unmatched, {int((match.sum(0) == 0).sum())} expected unmatched")


def to_device(tensors, device):
    return [t.to(device) for t in tensors]


def shared_anchors(anchors, device):
    """The golden ``anchors[image][level]`` -> the per-level tensors all images share (checked)."""
    levels = [a.to(device) for a in anchors[0]]
    assert all(torch.equal(a.to(device), b) for per_image in anchors for a, b in zip(per_image, levels))
    return levels


# ----------------------------------------------------------------------------- head

def test_head_layout_and_init():
    head = ATSSHead.from_config(atss_cfg(), 256)
    for tower in (head.cls_tower, head.bbox_tower):
        assert [type(m) for m in tower] == [nn.Conv2d, nn.GroupNorm, nn.ReLU] * 4
        for conv in tower[0::3]:
            assert conv.bias.abs().max() == 0
            assert abs(conv.weight.std().item() - 0.01) < 5e-4  # 590k draws of N(0, 0.01)
        assert all(gn.num_groups == 32 for gn in tower[1::3])
    assert head.cls_logits.out_channels == 80 and head.bbox_pred.out_channels == 4
    assert head.centerness.out_channels == 1
    # focal-loss prior: sigmoid(bias) == PRIOR_PROB
    torch.testing.assert_close(head.cls_logits.bias.sigmoid(), torch.full((80,), 0.01))
    assert head.bbox_pred.bias.abs().max() == 0
    assert [s.scale.item() for s in head.scales] == [1.0] * 5


def test_head_from_config_has_one_scale_per_anchor_stride():
    cfg = atss_cfg("MODEL.ATSS.ANCHOR_STRIDES", (8, 16, 32), "MODEL.ATSS.ANCHOR_SIZES", (64, 128, 256),
                   "MODEL.ATSS.NUM_CLASSES", 5, "MODEL.ATSS.NUM_CONVS", 2)
    head = ATSSHead.from_config(cfg, 32)
    assert [name for name, _ in head.scales.named_children()] == ["0", "1", "2"]
    assert len(head.cls_tower) == 6 and head.cls_logits.out_channels == 4
    plain = ATSSHead(32, num_foreground_classes=4, num_levels=3, num_convs=2)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in head.state_dict().items()}


def test_head_point_mode_bias_and_relu_after_scale():
    head = ATSSHead.from_config(atss_cfg("MODEL.ATSS.REGRESSION_TYPE", "POINT"), 64)
    assert (head.bbox_pred.bias == 4).all()
    features = [torch.randn(1, 64, 6, 5), torch.randn(1, 64, 3, 3)]
    with torch.no_grad():
        head.bbox_pred.bias.zero_()
        head.scales[0].scale.fill_(-1.0)  # relu(-x) differs from -relu(x): pins the order
        _, regression, _ = head(features)
        raw = [head.bbox_pred(head.bbox_tower(f)) for f in features]
    torch.testing.assert_close(regression[0], (-raw[0]).relu())
    torch.testing.assert_close(regression[1], raw[1].relu())
    assert (regression[0] > 0).any() and (regression[1] > 0).any() and (raw[0] < 0).any()


def test_head_point_mode_needs_one_anchor():
    cfg = atss_cfg("MODEL.ATSS.REGRESSION_TYPE", "POINT", "MODEL.ATSS.ASPECT_RATIOS", (0.5, 1.0, 2.0))
    with pytest.raises(ValueError, match="one anchor per location"):
        ATSSHead.from_config(cfg, 64)


def test_head_with_dcn_in_tower_names_and_init():
    head = ATSSHead.from_config(atss_cfg("MODEL.ATSS.USE_DCN_IN_TOWER", True), 256)
    names = set(head.state_dict())
    for tower in ("cls_tower", "bbox_tower"):
        assert {f"{tower}.9.conv.weight", f"{tower}.9.offset.weight", f"{tower}.9.offset.bias"} <= names
        assert f"{tower}.9.weight" not in names and f"{tower}.6.weight" in names
        # the head's init loop reaches the offset conv (a plain conv), as in the original
        offset = getattr(head, tower)[9].offset
        assert offset.bias.abs().max() == 0 and abs(offset.weight.std().item() - 0.01) < 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_head_matches_golden_outputs(device):
    golden = load_golden("model_eval_R50.pt")
    head = ATSSHead.from_config(atss_cfg(), 256)
    # weightfill values depend on the full key only: fill under the model's "rpn.head." prefix
    filled = weightfill().fill_state_dict({f"rpn.head.{k}": v for k, v in head.state_dict().items()})
    head.load_state_dict({k[len("rpn.head."):]: v for k, v in filled.items()}, strict=True)
    head.to(device).eval()
    with torch.no_grad():
        outputs = head(to_device(golden["fpn_features"], device))
    for name, ours in zip(("box_cls", "box_regression", "centerness"), outputs):
        for level, expected in enumerate(golden[name]):
            torch.testing.assert_close(ours[level].cpu(), expected, atol=1e-4, rtol=0,
                                       msg=lambda m: f"{name} level {level}: {m}")


# ----------------------------------------------------------------------------- post-processor

def golden_postprocessor(**overrides):
    params = dict(load_golden("components.pt")["postprocessor"]["params"], num_classes=81,
                  box_coder=BoxCoder.from_config(atss_cfg()))
    params.update(overrides)
    return ATSSPostProcessor(**params)


def run_postprocessor(postprocessor, record, anchors, image_sizes_hw, device):
    with torch.no_grad():
        return postprocessor(to_device(record["box_cls"], device), to_device(record["box_regression"], device),
                             to_device(record["centerness"], device), shared_anchors(anchors, device),
                             [tuple(size) for size in image_sizes_hw.tolist()])


def test_make_atss_postprocessor_reads_config():
    cfg = atss_cfg("MODEL.ATSS.INFERENCE_TH", 0.1, "MODEL.ATSS.PRE_NMS_TOP_N", 7, "MODEL.ATSS.NMS_TH", 0.5,
                   "TEST.DETECTIONS_PER_IMG", 9)
    post = make_atss_postprocessor(cfg, BoxCoder.from_config(cfg))
    assert (post.pre_nms_thresh, post.pre_nms_top_n, post.nms_thresh, post.fpn_post_nms_top_n, post.min_size,
            post.num_classes) == (0.1, 7, 0.5, 9, 0, 81)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["many", "few", "none"])
def test_postprocessor_matches_golden_components(case, device):
    data = load_golden("components.pt")["postprocessor"]
    record = data["cases"][case]
    results = run_postprocessor(golden_postprocessor(), record, data["anchors"], data["image_sizes_hw"], device)
    for result, expected, (h, w) in zip(results, record["detections"], data["image_sizes_hw"].tolist()):
        assert result.size == (w, h) and result.bbox.device.type == device
        assert_same_detections(result, expected, box_atol=1e-4, score_atol=1e-6)
        scores = result.get_field("scores")
        assert (scores[:-1] >= scores[1:]).all()  # documented: descending score order


@pytest.mark.parametrize("device", DEVICES)
def test_postprocessor_on_stored_model_outputs(device):
    """README "How to compare": stored head outputs + anchors through our post-processor."""
    golden = load_golden("model_eval_R50.pt")
    sizes = golden["image_sizes_hw"]
    results = run_postprocessor(golden_postprocessor(), golden, golden["anchors"], sizes, device)
    for result, expected in zip(results, golden["detections"]):
        assert_same_detections(result, expected, box_atol=1e-4, score_atol=1e-6)

    # one level at a time (the original's forward_for_single_feature_map: the candidates before
    # NMS) and all levels before NMS (TTA path)
    post = golden_postprocessor(bbox_aug_enabled=True)
    anchors = shared_anchors(golden["anchors"], device)
    with torch.no_grad():
        for level in range(5):
            per_image = post(
                [golden["box_cls"][level].to(device)], [golden["box_regression"][level].to(device)],
                [golden["centerness"][level].to(device)], [anchors[level]], [tuple(s) for s in sizes.tolist()])
            for result, expected in zip(per_image, golden["pre_nms_per_level"]):
                assert_same_detections(result, expected[level], box_atol=1e-4, score_atol=1e-6)
    candidates = run_postprocessor(golden_postprocessor(bbox_aug_enabled=True), golden, golden["anchors"],
                                   sizes, device)
    uncapped = run_postprocessor(golden_postprocessor(fpn_post_nms_top_n=0), golden, golden["anchors"],
                                 sizes, device)
    for image in range(2):
        assert_same_detections(candidates[image], golden["pre_nms"][image], box_atol=1e-4, score_atol=1e-6)
        assert_same_detections(uncapped[image], golden["post_nms_before_cap"][image], box_atol=1e-4,
                               score_atol=1e-6)


def test_postprocessor_batch_equals_single_images():
    data = load_golden("components.pt")["postprocessor"]
    record = data["cases"]["many"]
    post = golden_postprocessor()
    batched = run_postprocessor(post, record, data["anchors"], data["image_sizes_hw"], "cpu")
    for image in range(2):
        single = {name: [t[image:image + 1] for t in record[name]]
                  for name in ("box_cls", "box_regression", "centerness")}
        alone, = run_postprocessor(post, single, data["anchors"][image:image + 1],
                                   data["image_sizes_hw"][image:image + 1], "cpu")
        assert torch.equal(alone.bbox, batched[image].bbox)
        assert torch.equal(alone.get_field("scores"), batched[image].get_field("scores"))
        assert torch.equal(alone.get_field("labels"), batched[image].get_field("labels"))


def hand_case(cls_logits, anchors, image_size_wh=(100, 100), **overrides):
    """One image, one level of 1 x K locations, 2 classes, zero regression (boxes = anchors),
    centerness logit 30 (probability 1.0 in float32)."""
    num_locations = len(anchors)
    box_cls = torch.tensor(cls_logits, dtype=torch.float32).t().reshape(1, 2, 1, num_locations)
    regression = torch.zeros(1, 4, 1, num_locations)
    centerness = torch.full((1, 1, 1, num_locations), 30.0)
    params = dict(pre_nms_thresh=0.05, pre_nms_top_n=1000, nms_thresh=0.6, fpn_post_nms_top_n=100,
                  min_size=0, num_classes=3, box_coder=BoxCoder.from_config(atss_cfg()))
    params.update(overrides)
    anchors = [torch.tensor(anchors, dtype=torch.float32)]
    result, = ATSSPostProcessor(**params)([box_cls], [regression], [centerness], anchors, [image_size_wh[::-1]])
    return result


def logit(p):
    return math.log(p / (1 - p))


def test_threshold_on_class_probability_before_centerness():
    # sigmoid(cls) 0.06 passes 0.05 even though the product with centerness 0.5 does not;
    # 0.04 never passes; score = sqrt(sigmoid(cls) * sigmoid(ctr)).
    anchors = [[0, 0, 9, 9], [20, 20, 29, 29]]
    box_cls = torch.tensor([[logit(0.06), logit(0.04)], [logit(0.04), logit(0.04)]]).t().reshape(1, 2, 1, 2)
    centerness = torch.zeros(1, 1, 1, 2)  # sigmoid 0.5
    post = ATSSPostProcessor(0.05, 1000, 0.6, 100, 0, 3, BoxCoder.from_config(atss_cfg()))
    result, = post([box_cls], [torch.zeros(1, 4, 1, 2)], [centerness], [torch.tensor(anchors, dtype=torch.float32)],
                   [(50, 50)])
    assert result.get_field("labels").tolist() == [1]
    torch.testing.assert_close(result.get_field("scores"), torch.tensor([math.sqrt(0.06 * 0.5)]))
    torch.testing.assert_close(result.bbox, torch.tensor([[0.0, 0.0, 9.0, 9.0]]))


def test_nms_uses_plus_one_iou_and_is_class_aware():
    # Same width, nested heights 4 and 2.2: IoU is 3.2/5 = 0.64 with "+1" areas (suppressed at
    # 0.6) but 2.2/4 = 0.55 without. With different labels nothing is suppressed.
    anchors = [[0, 0, 4, 4], [0, 0, 4, 2.2]]
    same_label = hand_case([[logit(0.9), -20], [logit(0.8), -20]], anchors)
    assert same_label.get_field("labels").tolist() == [1]
    torch.testing.assert_close(same_label.bbox, torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    other_label = hand_case([[logit(0.9), -20], [-20, logit(0.8)]], anchors)
    assert sorted(other_label.get_field("labels").tolist()) == [1, 2]


def test_cap_over_all_classes_keeps_ties_and_clips_boxes():
    anchors = [[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9], [60, 0, 69, 9]]
    probs = [[0.9, 0.01], [0.01, 0.7], [0.7, 0.01], [0.01, 0.5]]
    logits = [[logit(p) for p in row] for row in probs]
    capped = hand_case(logits, anchors, fpn_post_nms_top_n=2)
    # the 2nd best score (0.7) is shared by two detections: both stay, as with kthvalue + ">="
    torch.testing.assert_close(capped.get_field("scores"), torch.tensor([0.9, 0.7, 0.7]).sqrt())
    assert len(hand_case(logits, anchors, fpn_post_nms_top_n=3)) == 3
    assert len(hand_case(logits, anchors, fpn_post_nms_top_n=0)) == 4
    # clip to (W - 1, H - 1) of the unpadded image: (65, 8) -> x to [0, 64], y to [0, 7]
    clipped = hand_case(logits, anchors, image_size_wh=(65, 8))
    assert clipped.bbox[:, 2].max() == 64 and clipped.bbox[:, 3].max() == 7
    assert sorted(clipped.bbox[:, 0].tolist()) == [0, 20, 40, 60]


def test_pre_nms_top_n_per_image_and_level():
    anchors = [[30 * i, 0, 30 * i + 9, 9] for i in range(5)]
    probs = [0.6, 0.9, 0.7, 0.8, 0.3]
    result = hand_case([[logit(p), -20] for p in probs], anchors, pre_nms_top_n=3)
    torch.testing.assert_close(result.get_field("scores"), torch.tensor([0.9, 0.8, 0.7]).sqrt())
    assert result.bbox[:, 0].tolist() == [30, 90, 60]
