"""Compiled ops and layers of atss_core.layers, on the compiled path and the fallback.

Oracles: torchvision.ops (nms / batched_nms on boxes widened by the "+1" pixel, deform_conv2d,
sigmoid_focal_loss), F.conv2d, hand-computed cases and the golden data of the original.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.autograd import gradcheck

from atss_core.layers import (DeformConv, DFConv2d, FrozenBatchNorm2d, ModulatedDeformConv, Scale,
                              SigmoidFocalLoss, deform_conv, ml_nms, modulated_deform_conv, nms,
                              sigmoid_focal_loss)
from atss_core.layers import _ext
from conftest import DEVICES, load_golden


@pytest.fixture(params=["compiled", "fallback"])
def op_path(request):
    """Runs the test once through atss_core._C and once through the fallback."""
    device = request.node.callspec.params.get("device", "cpu")
    if request.param == "compiled":
        if not _ext.has_compiled_ops():
            pytest.skip("atss_core._C is not built")
        with _ext.fallback_forced(False):
            if _ext.compiled_ops(device) is None:
                pytest.skip(f"atss_core._C has no kernels for {device}")
            yield request.param
    else:
        with _ext.fallback_forced():
            yield request.param


def widened(boxes):
    """Boxes whose continuous area equals the "+1" area of ``boxes`` (torchvision's convention)."""
    return boxes + boxes.new_tensor([0, 0, 1, 1])


def random_int_boxes(n, generator, extent=200, max_size=60, device="cpu"):
    """(n, 4) float32 boxes with integer corners, so "+1" and widened IoUs are bit-identical."""
    xy = torch.randint(0, extent, (n, 2), generator=generator)
    wh = torch.randint(0, max_size, (n, 2), generator=generator)
    return torch.cat([xy, xy + wh], dim=1).float().to(device)


def distinct_scores(n, generator, device="cpu"):
    """(n,) scores without ties, so every NMS implementation visits boxes in the same order."""
    return (torch.randperm(n, generator=generator).float() / n).to(device)


def reference_nms(boxes, scores, labels, threshold):
    """Tiny literal greedy NMS with "+1" areas (stable descending order, IoU > threshold)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        suppressed = False
        for k in kept:
            if labels is not None and labels[i] != labels[k]:
                continue
            a, b = boxes[i].tolist(), boxes[k].tolist()
            iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0)
            ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0)
            inter = iw * ih
            area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
            area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
            if inter / (area_a + area_b - inter) > threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


# --------------------------------------------------------------------------------------- NMS

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision_on_widened_boxes(op_path, device, threshold):
    g = torch.Generator().manual_seed(1)
    boxes = random_int_boxes(600, g, device=device)
    scores = distinct_scores(600, g, device)
    keep = nms(boxes, scores, threshold)
    expected = torchvision.ops.nms(widened(boxes), scores, threshold)
    assert keep.dtype == torch.int64 and keep.device == boxes.device
    assert keep.tolist() == expected.tolist()  # same boxes, same (descending score) order


@pytest.mark.parametrize("device", DEVICES)
def test_nms_many_boxes(op_path, device):
    g = torch.Generator().manual_seed(2)
    boxes = random_int_boxes(12000, g, extent=1000, max_size=100, device=device)
    scores = distinct_scores(12000, g, device)
    keep = nms(boxes, scores, 0.5)
    expected = torchvision.ops.nms(widened(boxes), scores, 0.5)
    assert 1000 < len(keep) < 12000
    assert keep.tolist() == expected.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_nms_uses_plus_one_areas_and_strict_threshold(op_path, device):
    # "+1": areas 100 and 100, intersection 5*10 = 50 -> IoU 1/3 (continuous areas give 0.286).
    boxes = torch.tensor([[0.0, 0, 9, 9], [5, 0, 14, 9]], device=device)
    scores = torch.tensor([0.9, 0.8], device=device)
    assert nms(boxes, scores, 0.3).tolist() == [0]
    assert nms(boxes, scores, 0.34).tolist() == [0, 1]
    # IoU exactly 0.5 (areas 100 and 200, intersection 100): kept at 0.5, suppressed below.
    boxes = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 19]], device=device)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.4999).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_nms_edge_cases(op_path, device):
    empty = nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    one = nms(torch.tensor([[1.0, 2, 3, 4]], device=device), torch.tensor([0.3], device=device), 0.5)
    assert one.tolist() == [0]
    # Identical boxes with equal scores: the lowest index survives.
    same = torch.tensor([[5.0, 5, 20, 20]] * 3, device=device)
    assert nms(same, torch.full((3,), 0.5, device=device), 0.5).tolist() == [0]
    # Equal scores, no overlap: all kept, in index order (stable sort).
    apart = torch.tensor([[0.0, 0, 5, 5], [10, 10, 15, 15], [20, 20, 25, 25]], device=device)
    assert nms(apart, torch.ones(3, device=device), 0.5).tolist() == [0, 1, 2]
    # Point boxes have a "+1" area of 1: duplicates suppress each other, distinct points do not.
    points = torch.tensor([[3.0, 3, 3, 3], [3, 3, 3, 3], [4, 3, 4, 3]], device=device)
    assert nms(points, torch.tensor([0.5, 0.9, 0.7], device=device), 0.5).tolist() == [1, 2]


def test_nms_matches_reference_with_ties(op_path):
    g = torch.Generator().manual_seed(3)
    boxes = random_int_boxes(60, g, extent=40, max_size=30)
    scores = torch.randint(0, 4, (60,), generator=g).float()  # many equal scores
    labels = torch.randint(0, 3, (60,), generator=g)
    assert nms(boxes, scores, 0.4).tolist() == reference_nms(boxes, scores, None, 0.4)
    assert ml_nms(boxes, scores, labels, 0.4).tolist() == reference_nms(boxes, scores, labels, 0.4)


@pytest.mark.parametrize("device", DEVICES)
def test_ml_nms_matches_torchvision_batched_nms(op_path, device):
    g = torch.Generator().manual_seed(4)
    boxes = random_int_boxes(3000, g, extent=400, device=device)
    scores = distinct_scores(3000, g, device)
    labels = torch.randint(1, 81, (3000,), generator=g).to(device)
    expected = torchvision.ops.batched_nms(widened(boxes), scores, labels, 0.6)
    keep = ml_nms(boxes, scores, labels, 0.6)
    assert keep.tolist() == expected.tolist()
    # The original passed labels as float.
    assert ml_nms(boxes, scores, labels.float(), 0.6).tolist() == expected.tolist()


def test_ml_nms_only_suppresses_within_a_label(op_path):
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 4)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 2, 1, 3])
    assert ml_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 3]
    assert ml_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).tolist() == []


def test_ml_nms_reproduces_golden_post_nms(op_path):
    golden = load_golden("model_eval_R50.pt")
    for candidates, expected in zip(golden["pre_nms"], golden["post_nms_before_cap"]):
        keep = ml_nms(candidates["bbox"], candidates["scores"], candidates["labels"], 0.6)
        assert torch.all(candidates["scores"][keep][:-1] >= candidates["scores"][keep][1:])
        # The original returned ascending candidate indices.
        keep = keep.sort().values
        assert torch.equal(candidates["bbox"][keep], expected["bbox"])
        assert torch.equal(candidates["labels"][keep], expected["labels"])


@pytest.mark.parametrize("low_precision", [torch.float16, torch.bfloat16])
def test_nms_and_ml_nms_on_low_precision_boxes(op_path, low_precision):
    """Half / bfloat16 boxes and scores (integer corners and scores k/64, exact in both): the
    kept set is torchvision's on the widened float32 copies."""
    generator = torch.Generator().manual_seed(5)
    boxes = random_int_boxes(64, generator, extent=120, max_size=40)
    scores = torch.randperm(64, generator=generator).float() / 64
    labels = torch.randint(1, 4, (64,), generator=generator)
    expected = torchvision.ops.nms(widened(boxes), scores, 0.5)
    expected_ml = torchvision.ops.batched_nms(widened(boxes), scores, labels, 0.5)
    low_boxes, low_scores = boxes.to(low_precision), scores.to(low_precision)
    assert sorted(nms(low_boxes, low_scores, 0.5).tolist()) == sorted(expected.tolist())
    assert sorted(ml_nms(low_boxes, low_scores, labels, 0.5).tolist()) == sorted(expected_ml.tolist())


def test_nms_rejects_bad_input():
    with pytest.raises(ValueError, match="boxes must be an \\(N, 4\\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores must have shape \\(3,\\)"):
        nms(torch.zeros(3, 4), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="labels"):
        ml_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2), 0.5)


# ------------------------------------------------------------------------------ focal loss

def torchvision_focal(logits, targets, gamma, alpha):
    """Oracle: torchvision's focal loss on one-hot targets, ignored rows zeroed."""
    classes = torch.arange(1, logits.shape[1] + 1, device=logits.device)
    one_hot = (targets.long()[:, None] == classes).to(logits.dtype)
    loss = torchvision.ops.sigmoid_focal_loss(logits, one_hot, alpha=alpha, gamma=gamma, reduction="none")
    return loss * (targets[:, None] >= 0)


def test_focal_loss_reproduces_golden(op_path):
    golden = load_golden("components.pt")["focal"]
    logits = golden["logits"].clone().requires_grad_()
    loss_module = SigmoidFocalLoss(golden["gamma"], golden["alpha"])
    loss = loss_module(logits, golden["targets_int32"])
    loss.backward()
    elementwise = sigmoid_focal_loss(logits.detach(), golden["targets_int32"], 2.0, 0.25)
    # Golden elementwise/grad come from the original's float32 CPU formula, which is off by up to
    # 6.6e-5 from the exact value; the float64 kernel formula is the tight reference.
    torch.testing.assert_close(elementwise.double(), golden["cuda_kernel_formula_elementwise_float64"],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(elementwise, golden["elementwise"], rtol=0, atol=1e-4)
    torch.testing.assert_close(loss, golden["loss_sum"], rtol=1e-6, atol=0)
    torch.testing.assert_close(logits.grad, golden["grad_logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75)])
def test_focal_loss_matches_torchvision(op_path, device, gamma, alpha):
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(500, 30, generator=g) * 4).to(device).requires_grad_()
    targets = torch.randint(-1, 31, (500,), generator=g, dtype=torch.int32).to(device)
    oracle_logits = logits.detach().clone().requires_grad_()
    loss = sigmoid_focal_loss(logits, targets, gamma, alpha)
    expected = torchvision_focal(oracle_logits, targets, gamma, alpha)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.rand(500, 30, generator=g).to(device)
    (loss * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(logits.grad, oracle_logits.grad, rtol=1e-5, atol=1e-5)
    assert torch.all(loss[targets < 0] == 0) and torch.all(logits.grad[targets < 0] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_focal_loss_is_finite_for_extreme_logits(op_path, device):
    logits = torch.tensor([[-200.0, -30, 0, 30, 200]] * 3, device=device).requires_grad_()
    targets = torch.tensor([0, 4, 2], device=device)  # background; class 4 (logit 30); class 2 (-30)
    loss = sigmoid_focal_loss(logits, targets, 2.0, 0.25)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # Confident and right costs ~0; confident and wrong costs ~alpha * |logit|.
    assert loss[1, 3] < 1e-20 and loss[0, 0] < 1e-20
    assert loss[0, 4].item() == pytest.approx(0.75 * 200, rel=1e-6)
    assert loss[2, 1].item() == pytest.approx(0.25 * 30, rel=1e-6)


def test_focal_loss_gradcheck(op_path):
    g = torch.Generator().manual_seed(6)
    logits = (torch.randn(12, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.tensor([-1, 0, 1, 2, 3, 4, 5, 0, 5, 1, -1, 3])
    assert gradcheck(lambda x: sigmoid_focal_loss(x, targets, 2.0, 0.25), (logits,))
    assert gradcheck(lambda x: sigmoid_focal_loss(x, targets, 1.5, 0.4), (logits,))


def test_focal_loss_edge_cases_and_errors(op_path):
    loss = SigmoidFocalLoss(2.0, 0.25)
    assert loss(torch.zeros(0, 80), torch.zeros(0, dtype=torch.int32)).item() == 0
    logits = torch.randn(4, 3)
    int32 = loss(logits, torch.tensor([0, 1, -1, 3], dtype=torch.int32))
    assert int32.item() == loss(logits, torch.tensor([0, 1, -1, 3])).item()
    assert repr(loss) == "SigmoidFocalLoss(gamma=2.0, alpha=0.25)"
    with pytest.raises(TypeError, match="targets must be integer labels"):
        loss(logits, torch.zeros(4))
    with pytest.raises(ValueError, match="targets must have shape \\(4,\\)"):
        loss(logits, torch.zeros(5, dtype=torch.int64))


# ------------------------------------------------------------------ deformable convolution

DCN_CASES = [
    # (N, C, H, W, C_out, kernel, stride, padding, dilation, groups, deformable_groups)
    (2, 4, 9, 11, 6, 3, 1, 1, 1, 1, 1),
    (1, 8, 10, 7, 4, 3, 2, 1, 1, 2, 2),
    (2, 6, 8, 8, 6, (3, 2), (1, 2), (2, 0), (2, 1), 3, 3),
]


def make_dcn_inputs(case, generator, dtype=torch.float32, device="cpu", offset_scale=2.0):
    n, c, h, w, c_out, kernel, stride, padding, dilation, groups, dgroups = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    (sh, sw), (ph, pw), (dh, dw) = (torch.nn.modules.utils._pair(v) for v in (stride, padding, dilation))
    out_h = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(device, dtype)

    return dict(
        input=rand(n, c, h, w),
        # Offsets of a few pixels: many samples fall between pixels, some outside the image.
        offset=rand(n, dgroups * 2 * kh * kw, out_h, out_w, scale=offset_scale),
        mask=torch.rand(n, dgroups * kh * kw, out_h, out_w, generator=generator, dtype=torch.float64).to(device, dtype),
        weight=rand(c_out, c // groups, kh, kw, scale=0.3),
        bias=rand(c_out),
        conv=dict(stride=stride, padding=padding, dilation=dilation, groups=groups, deformable_groups=dgroups),
    )


def torchvision_dcn(t, mask=None, bias=None):
    conv = t["conv"]
    return torchvision.ops.deform_conv2d(t["input"], t["offset"], t["weight"], bias, stride=conv["stride"],
                                         padding=conv["padding"], dilation=conv["dilation"], mask=mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DCN_CASES)
def test_deform_conv_matches_torchvision(op_path, device, case):
    t = make_dcn_inputs(case, torch.Generator().manual_seed(7), device=device)
    out = deform_conv(t["input"], t["offset"], t["weight"], **t["conv"])
    torch.testing.assert_close(out, torchvision_dcn(t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DCN_CASES)
def test_modulated_deform_conv_matches_torchvision(op_path, device, case):
    t = make_dcn_inputs(case, torch.Generator().manual_seed(8), device=device)
    leaves = {k: t[k].clone().requires_grad_() for k in ("input", "offset", "mask", "weight", "bias")}
    out = modulated_deform_conv(leaves["input"], leaves["offset"], leaves["mask"], leaves["weight"],
                                leaves["bias"], **t["conv"])
    oracle = {k: t[k].clone().requires_grad_() for k in leaves}
    expected = torchvision_dcn({**oracle, "conv": t["conv"]}, mask=oracle["mask"], bias=oracle["bias"])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(device)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, oracle[name].grad, rtol=1e-5, atol=1e-4, msg=name)


@pytest.mark.parametrize("low_precision", [torch.bfloat16, torch.float16])
def test_deform_conv_runs_in_float32_under_mixed_precision(op_path, low_precision):
    """DTYPE float16/bfloat16 training: under autocast the op gets low-precision activations,
    offsets and masks next to float32 weights, and computes in float32 exactly what it computes
    for the upcast tensors outside autocast."""
    t = make_dcn_inputs(DCN_CASES[0], torch.Generator().manual_seed(3))
    low = {k: t[k].to(low_precision) for k in ("input", "offset", "mask")}
    expected = modulated_deform_conv(low["input"].float(), low["offset"].float(), low["mask"].float(),
                                     t["weight"], t["bias"], **t["conv"])
    with torch.autocast("cpu", dtype=low_precision):
        out = modulated_deform_conv(low["input"], low["offset"], low["mask"], t["weight"], t["bias"],
                                    **t["conv"])
        out_v1 = deform_conv(low["input"], low["offset"], t["weight"], **t["conv"])
    assert out.dtype == out_v1.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(out_v1, deform_conv(low["input"].float(), low["offset"].float(), t["weight"],
                                                   **t["conv"]), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_deform_conv_with_zero_offsets_is_a_convolution(op_path, device):
    t = make_dcn_inputs(DCN_CASES[1], torch.Generator().manual_seed(10), device=device)
    conv = t["conv"]
    zero_offset = torch.zeros_like(t["offset"])
    ones = torch.ones_like(t["mask"])
    expected = F.conv2d(t["input"], t["weight"], t["bias"], conv["stride"], conv["padding"], conv["dilation"],
                        conv["groups"])
    out = modulated_deform_conv(t["input"], zero_offset, ones, t["weight"], t["bias"], **conv)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out_v1 = deform_conv(t["input"], zero_offset, t["weight"], **conv)
    torch.testing.assert_close(out_v1, expected - t["bias"].view(1, -1, 1, 1), rtol=1e-5, atol=1e-5)
    # Shifting every sample 100 px outside the image leaves only the bias.
    far = torch.full_like(t["offset"], 100.0)
    out_far = modulated_deform_conv(t["input"], far, ones, t["weight"], t["bias"], **conv)
    torch.testing.assert_close(out_far, t["bias"].view(1, -1, 1, 1).expand_as(out_far))


@pytest.mark.parametrize("case", [(1, 2, 5, 4, 2, 3, 1, 1, 1, 1, 1), (1, 4, 5, 5, 2, 3, 2, 1, 1, 2, 2)])
def test_deform_conv_gradcheck(op_path, case):
    t = make_dcn_inputs(case, torch.Generator().manual_seed(11), dtype=torch.float64)
    # Keep |offset| small enough that no sample sits within gradcheck's eps of a pixel border.
    t["offset"] = t["offset"] * 0.25 + 0.3
    conv = t["conv"]
    leaves = [t[k].requires_grad_() for k in ("input", "offset", "mask", "weight", "bias")]
    assert gradcheck(lambda x, o, w: deform_conv(x, o, w, **conv), (leaves[0], leaves[1], leaves[3]))
    assert gradcheck(lambda x, o, m, w, b: modulated_deform_conv(x, o, m, w, b, **conv), tuple(leaves))


def test_deform_conv_modules_and_errors(op_path):
    torch.manual_seed(12)
    v1 = DeformConv(4, 6, 3, padding=1)
    v2 = ModulatedDeformConv(4, 6, 3, stride=2, padding=1, deformable_groups=2)
    assert [k for k, _ in v1.named_parameters()] == ["weight"]
    assert [k for k, _ in v2.named_parameters()] == ["weight", "bias"]
    bound = 1 / math.sqrt(4 * 9)
    assert v2.weight.abs().max() <= bound and v2.weight.abs().max() > 0.8 * bound
    assert torch.all(v2.bias == 0)
    x = torch.randn(2, 4, 7, 7)
    assert v1(x, torch.randn(2, 18, 7, 7)).shape == (2, 6, 7, 7)
    assert v2(x, torch.randn(2, 36, 4, 4), torch.rand(2, 18, 4, 4)).shape == (2, 6, 4, 4)
    assert v1(torch.zeros(0, 4, 7, 7), torch.zeros(0, 18, 7, 7)).shape == (0, 6, 7, 7)
    with pytest.raises(ValueError, match=r"offset must have shape \(2, 18, 7, 7\)"):
        v1(x, torch.randn(2, 27, 7, 7))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 18, 4, 4\)"):
        v2(x, torch.randn(2, 36, 4, 4), torch.rand(2, 9, 4, 4))
    with pytest.raises(ValueError, match="too small"):
        DeformConv(4, 6, 5)(torch.randn(1, 4, 3, 3), torch.randn(1, 50, 1, 1))


def test_dfconv2d_matches_original_layout(op_path):
    torch.manual_seed(13)
    layer = DFConv2d(16, 8, with_modulated_dcn=True, kernel_size=3, stride=2, bias=True)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {
        "offset.weight": (27, 16, 3, 3), "offset.bias": (27,), "conv.weight": (8, 16, 3, 3), "conv.bias": (8,)}
    assert torch.all(layer.offset.bias == 0)
    fan_in_bound = math.sqrt(6 / ((1 + 1) * 16 * 9))  # kaiming_uniform_(a=1)
    assert layer.offset.weight.abs().max() <= fan_in_bound
    # Offsets are channels 0..17 of the offset conv, the mask is sigmoid of channels 18..26.
    x = torch.randn(2, 16, 9, 10)
    with torch.no_grad():
        layer.offset.weight.normal_(0, 0.2)
        raw = layer.offset(x)
        expected = torchvision.ops.deform_conv2d(x, raw[:, :18], layer.conv.weight, layer.conv.bias, stride=2,
                                                 padding=1, mask=raw[:, 18:].sigmoid())
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    v1 = DFConv2d(16, 8, with_modulated_dcn=False)
    assert {k: tuple(v.shape) for k, v in v1.state_dict().items()} == {
        "offset.weight": (18, 16, 3, 3), "offset.bias": (18,), "conv.weight": (8, 16, 3, 3)}
    # Several deformable groups (the original's fixed split at 18 channels broke this).
    grouped = DFConv2d(16, 8, deformable_groups=2)
    assert grouped.offset.out_channels == 54 and grouped(x).shape == (2, 8, 9, 10)


def test_dfconv2d_names_match_golden_dcn_keys():
    keys = load_golden("keys_atss_dcnv2_R_50_FPN_1x.json")["keys"]
    for prefix, channels, bias in [("backbone.body.layer3.0.conv2.", 256, False), ("rpn.head.cls_tower.9.", 256, True)]:
        layer = DFConv2d(channels, channels, bias=bias)
        expected = {k[len(prefix):]: v["shape"] for k, v in keys.items() if k.startswith(prefix)}
        assert {k: list(v.shape) for k, v in layer.state_dict().items()} == expected


# ---------------------------------------------------------------------------- small layers

def test_frozen_batch_norm_has_no_eps_and_only_buffers():
    layer = FrozenBatchNorm2d(3)
    assert list(layer.parameters()) == []
    assert [k for k, _ in layer.named_buffers()] == ["weight", "bias", "running_mean", "running_var"]
    layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    layer.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    layer.running_var.copy_(torch.tensor([4.0, 0.25, 1e-8]))  # a tiny variance shows there is no eps
    x = torch.randn(2, 3, 4, 5)
    expected = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, 0.0)
    torch.testing.assert_close(layer(x), expected)
    assert layer(x.double()).dtype == torch.float64


def test_scale():
    scale = Scale(init_value=2.5)
    assert [(k, tuple(v.shape)) for k, v in scale.named_parameters()] == [("scale", (1,))]
    x = torch.randn(2, 4, 3, 3)
    out = scale(x)
    torch.testing.assert_close(out, 2.5 * x)
    out.sum().backward()
    torch.testing.assert_close(scale.scale.grad, x.sum().reshape(1))


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_ext, "_loaded", True)
    monkeypatch.setattr(_ext, "_extension", None)
    monkeypatch.setattr(_ext, "_load_error", ImportError("no module named atss_core._C"))
    monkeypatch.setattr(_ext, "_warned", set())
    boxes = torch.tensor([[0.0, 0, 9, 9], [5, 0, 14, 9]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert nms(boxes, torch.tensor([0.9, 0.8]), 0.3).tolist() == [0]
        assert SigmoidFocalLoss(2.0, 0.25)(torch.zeros(2, 3), torch.tensor([1, 0])).item() > 0
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "atss_core._C could not be imported" in messages[0]
