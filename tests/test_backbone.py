"""Backbone tests: ResNet/ResNeXt bodies, FPN variants, MobileNetV2, freezing, BN folding.

Oracles: the golden state-dict listings and R-50 features recorded from the original,
torchvision's ResNet/ResNeXt/MobileNetV2 with copied weights, and hand-written convs.
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from atss_core.config import cfg as default_cfg
from atss_core.layers import FrozenBatchNorm2d
from atss_core.modeling.backbone import build_backbone
from atss_core.modeling.fuse import fuse_frozen_bn
from conftest import DEVICES, load_golden, weightfill

# Backbone-relevant overrides of configs/atss/*.yaml (the rest of each file is head/solver).
ATSS_R50 = ["MODEL.BACKBONE.CONV_BODY", "R-50-FPN-RETINANET",
            "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 256, "MODEL.RETINANET.USE_C5", False]
GOLDEN_CONFIGS = {
    "atss_R_50_FPN_1x": ATSS_R50,
    "atss_dcnv2_R_50_FPN_1x": ATSS_R50 + [
        "MODEL.RESNETS.STAGE_WITH_DCN", (False, True, True, True),
        "MODEL.RESNETS.WITH_MODULATED_DCN", True, "MODEL.RESNETS.DEFORMABLE_GROUPS", 1],
    "atss_R_101_FPN_2x": ATSS_R50 + ["MODEL.BACKBONE.CONV_BODY", "R-101-FPN-RETINANET"],
    "atss_X_101_32x8d_FPN_2x": ATSS_R50 + [
        "MODEL.BACKBONE.CONV_BODY", "R-101-FPN-RETINANET", "MODEL.RESNETS.STRIDE_IN_1X1", False,
        "MODEL.RESNETS.NUM_GROUPS", 32, "MODEL.RESNETS.WIDTH_PER_GROUP", 8],
}


def make_cfg(overrides=ATSS_R50, extra=()):
    cfg = default_cfg.clone()
    cfg.merge_from_list(list(overrides) + list(extra))
    return cfg


@contextlib.contextmanager
def exact_cuda_math():
    """TF32 convs would blow the float32 tolerances on Ampere+ GPUs."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def rel_max_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


# --------------------------------------------------------------------------- state dict


@pytest.mark.parametrize("config", sorted(GOLDEN_CONFIGS))
def test_state_dict_matches_golden_listing(config):
    golden = load_golden(f"keys_{config}.json")["keys"]
    expected = {k: v for k, v in golden.items() if k.startswith("backbone.")}
    with torch.device("meta"):  # names and shapes only: skip allocating ~100M weights
        model = build_backbone(make_cfg(GOLDEN_CONFIGS[config]))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    actual = {}
    for key, tensor in model.state_dict().items():
        is_param = key in params
        actual["backbone." + key] = {
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "kind": "parameter" if is_param else "buffer",
            "requires_grad": params[key].requires_grad if is_param else None,
        }
        assert is_param or key in buffers
    assert list(actual) == list(expected)  # same names in the same order
    assert actual == expected
    assert model.out_channels == 256


# --------------------------------------------------------------------------- golden numerics


@pytest.fixture(scope="module")
def golden_r50():
    """(filled R-50-FPN-RETINANET backbone in eval mode, golden record)."""
    golden = load_golden("model_eval_R50.pt")
    model = build_backbone(make_cfg()).eval()
    # The fill depends on the key names, so fill with the full-model prefix.
    prefixed = {"backbone." + k: v for k, v in model.state_dict().items()}
    filled = weightfill().fill_state_dict(prefixed)
    model.load_state_dict({k.removeprefix("backbone."): v for k, v in filled.items()},
                          strict=True)
    return model, golden


def check_against_golden(body_features, fpn_features, golden):
    for feature, stats in zip(body_features, golden["body_features_stats"], strict=True):
        feature = feature.double().cpu()
        assert list(feature.shape) == stats["shape"].tolist()
        assert feature.mean().item() == pytest.approx(stats["mean"].item(), abs=1e-4)
        assert feature.std().item() == pytest.approx(stats["std"].item(), rel=1e-4)
        assert feature.abs().max().item() == pytest.approx(stats["absmax"].item(), abs=2e-3)
        torch.testing.assert_close(feature[:, ::32, ::4, ::4].float(), stats["subsample"],
                                   atol=2e-3, rtol=0)
    for feature, expected in zip(fpn_features, golden["fpn_features"], strict=True):
        torch.testing.assert_close(feature.cpu(), expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_r50_features_match_golden(golden_r50, device):
    model, golden = golden_r50
    model = model.to(device)
    images = golden["batched_images"].to(device)
    with torch.no_grad(), exact_cuda_math():
        body_features = model.body(images)
        fpn_features = model.fpn(body_features)
        whole = model(images)
    model.cpu()
    assert len(body_features) == 4 and len(fpn_features) == 5
    check_against_golden(body_features, fpn_features, golden)
    for composed, direct in zip(whole, fpn_features, strict=True):
        torch.testing.assert_close(composed, direct, atol=0, rtol=0)


# --------------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("device", DEVICES)
def test_fused_and_channels_last_match_unfused(golden_r50, device):
    model, golden = golden_r50
    images = golden["batched_images"].to(device)
    images_cl = images.to(memory_format=torch.channels_last)
    # Fuse a copy holding the golden weights: fusing rewrites the state dict.
    fused = build_backbone(make_cfg()).eval()
    fused.load_state_dict(model.state_dict())
    fuse_frozen_bn(fused).to(device)
    with torch.no_grad(), exact_cuda_math():
        reference = model.to(device)(images)
        fused_body = fused.body(images)
        fused_out = fused.fpn(fused_body)
        fused_cl_out = fused.to(memory_format=torch.channels_last)(images_cl)
    model.cpu()

    for ref, out, out_cl in zip(reference, fused_out, fused_cl_out, strict=True):
        assert rel_max_err(out, ref) < 1e-4
        assert rel_max_err(out_cl, ref) < 1e-4
        assert out_cl.is_contiguous(memory_format=torch.channels_last)
    check_against_golden(fused_body, fused_out, golden)

    keys = fused.state_dict().keys()
    assert not any(".bn" in k or "downsample.1." in k for k in keys)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fused.modules())
    # 53 convs (stem, 16 blocks × 3, 4 projections) gained the folded bias.
    assert sum(k.startswith("body.") and k.endswith(".bias") for k in keys) == 53


def test_fusion_folds_hand_computed_affine():
    """conv -> FrozenBN with known stats equals conv with W·s, b·s + t."""
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    norm = FrozenBatchNorm2d(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        norm.running_mean.copy_(torch.tensor([0.5, 0.0, -1.0, 2.0]))
        norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.25, 16.0]))
    scale = torch.tensor([0.5, 2.0, 1.0, -0.25])  # weight / sqrt(var), no eps
    shift = torch.tensor([0.1, -0.2, 0.3, 0.0]) - torch.tensor([0.5, 0.0, -1.0, 2.0]) * scale
    expected_weight = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    expected_bias = conv.bias.detach() * scale + shift

    pair = fuse_frozen_bn(nn.Sequential(conv, norm))
    assert isinstance(pair[1], nn.Identity)
    torch.testing.assert_close(pair[0].weight.detach(), expected_weight)
    torch.testing.assert_close(pair[0].bias.detach(), expected_bias)


# --------------------------------------------------------------------------- torchvision oracles


def copy_torchvision_resnet(model, tv_resnet):
    """Load torchvision ResNet weights into our body. torchvision's BN adds eps=1e-5 to the
    variance; FrozenBatchNorm2d has none, so the eps is folded into running_var."""
    state = {}
    for key, value in tv_resnet.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var"):
            value = value + 1e-5
        state["stem." + key if key.startswith(("conv1.", "bn1.")) else key] = value
    model.body.load_state_dict(state, strict=True)


def randomize_batchnorm_stats(module):
    generator = torch.Generator().manual_seed(1)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.weight.data = 0.8 + 0.4 * torch.rand(n, generator=generator)
            bn.bias.data = 0.1 * torch.randn(n, generator=generator)
            bn.running_mean = 0.1 * torch.randn(n, generator=generator)
            bn.running_var = 0.5 + torch.rand(n, generator=generator)


@pytest.mark.parametrize("groups,width,tv_builder", [
    (1, 64, torchvision.models.resnet50),          # torchvision strides in the 3×3
    (32, 4, torchvision.models.resnext50_32x4d),   # ResNeXt-50 32x4d
])
def test_body_matches_torchvision(groups, width, tv_builder):
    tv = tv_builder().eval()
    randomize_batchnorm_stats(tv)
    model = build_backbone(make_cfg(extra=[
        "MODEL.RESNETS.STRIDE_IN_1X1", False, "MODEL.RESNETS.NUM_GROUPS", groups,
        "MODEL.RESNETS.WIDTH_PER_GROUP", width])).eval()
    copy_torchvision_resnet(model, tv)
    assert model.body.layer3[0].conv2.groups == groups
    assert model.body.layer1[0].conv2.stride == (1, 1)
    assert model.body.layer2[0].conv2.stride == (2, 2)  # STRIDE_IN_1X1 False
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.body(images)
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(images))))
        for ours_c, stage in zip(ours, (tv.layer1, tv.layer2, tv.layer3, tv.layer4), strict=True):
            x = stage(x)
            assert rel_max_err(ours_c, x) < 1e-5
        pyramid = model(images)
    assert [tuple(p.shape) for p in pyramid] == [
        (1, 256, 12, 16), (1, 256, 6, 8), (1, 256, 3, 4), (1, 256, 2, 2), (1, 256, 1, 1)]


def test_stride_in_1x1_places_stride_in_first_conv():
    model = build_backbone(make_cfg())  # MSRA default: STRIDE_IN_1X1 True
    block = model.body.layer3[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert block.downsample[0].stride == (2, 2)


def test_mobilenet_v2_matches_torchvision():
    tv = torchvision.models.mobilenet_v2().eval()
    randomize_batchnorm_stats(tv)
    model = build_backbone(make_cfg(extra=["MODEL.BACKBONE.CONV_BODY", "MNV2-FPN-RETINANET"]))
    model.eval()
    assert model.body.return_features_num_channels == [24, 32, 96, 320]
    # Same layers in the same order; only the module nesting (and so the names) differ.
    ours_state = model.body.features.state_dict()
    tv_values = list(tv.features[:18].state_dict().values())
    assert [v.shape for v in ours_state.values()] == [v.shape for v in tv_values]
    model.body.features.load_state_dict(dict(zip(ours_state, tv_values, strict=True)))

    images = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        ours = model.body(images)
        x, expected = images, []
        for index, layer in enumerate(tv.features[:18]):
            x = layer(x)
            if index in (3, 6, 13, 17):
                expected.append(x)
        pyramid = model(images)
    for ours_c, expected_c in zip(ours, expected, strict=True):
        assert rel_max_err(ours_c, expected_c) < 1e-5
    assert [tuple(p.shape) for p in pyramid] == [
        (1, 256, 16, 20), (1, 256, 8, 10), (1, 256, 4, 5), (1, 256, 2, 3), (1, 256, 1, 2)]

    fused = fuse_frozen_bn(model)  # eval-mode BatchNorm2d folds too
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        for out, ref in zip(fused(images), pyramid, strict=True):
            assert rel_max_err(out, ref) < 1e-4


def test_fusing_training_batchnorm_is_refused():
    model = build_backbone(make_cfg(extra=["MODEL.BACKBONE.CONV_BODY", "MNV2-FPN-RETINANET"]))
    with pytest.raises(ValueError, match="model.eval"):
        fuse_frozen_bn(model.train())


# --------------------------------------------------------------------------- FPN variants


@pytest.mark.parametrize("use_c5", [False, True])
def test_p6_p7_source(use_c5):
    model = build_backbone(make_cfg(extra=["MODEL.RETINANET.USE_C5", use_c5])).eval()
    top = model.fpn.top_blocks
    assert top.p6.in_channels == (2048 if use_c5 else 256)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c2, c3, c4, c5 = model.body(images)
        p3, p4, p5, p6, p7 = model.fpn([c2, c3, c4, c5])
        source = c5 if use_c5 else p5
        expected_p6 = F.conv2d(source, top.p6.weight, top.p6.bias, stride=2, padding=1)
        expected_p7 = F.conv2d(expected_p6.clamp(min=0), top.p7.weight, top.p7.bias,
                               stride=2, padding=1)
        # P5 = fpn_layer4(fpn_inner4(C5)): no top-down input at the coarsest level.
        inner = model.fpn.fpn_inner4
        layer = model.fpn.fpn_layer4
        expected_p5 = F.conv2d(F.conv2d(c5, inner.weight, inner.bias), layer.weight,
                               layer.bias, padding=1)
    torch.testing.assert_close(p5, expected_p5)
    torch.testing.assert_close(p6, expected_p6)
    torch.testing.assert_close(p7, expected_p7)


def test_top_down_uses_nearest_resize_to_lateral_size():
    """Odd sizes: P4's top-down term is P5's inner map resized to C4's grid, not ×2."""
    model = build_backbone(make_cfg()).eval()
    images = torch.randn(1, 3, 72, 104)  # C3 9×13, C4 5×7, C5 3×4
    with torch.no_grad():
        c2, c3, c4, c5 = model.body(images)
        p3, p4 = model.fpn([c2, c3, c4, c5])[:2]
        fpn = model.fpn
        inner5 = fpn.fpn_inner4(c5)
        rows = (torch.arange(5) * 3 / 5).floor().long()  # nearest: floor(i·in/out)
        cols = (torch.arange(7) * 4 / 7).floor().long()
        inner4 = fpn.fpn_inner3(c4) + inner5[:, :, rows][:, :, :, cols]
        expected_p4 = fpn.fpn_layer3(inner4)
    assert tuple(c4.shape[-2:]) == (5, 7) and tuple(p3.shape[-2:]) == (9, 13)
    torch.testing.assert_close(p4, expected_p4)


def test_faster_rcnn_fpn_p2_to_p6():
    model = build_backbone(make_cfg(extra=["MODEL.BACKBONE.CONV_BODY", "R-50-FPN"])).eval()
    assert model.out_channels == 256 and hasattr(model.fpn, "fpn_inner1")
    with torch.no_grad():
        pyramid = model(torch.randn(1, 3, 64, 64))
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    torch.testing.assert_close(pyramid[4], pyramid[3][:, :, ::2, ::2], atol=0, rtol=0)


def test_dcn_stages_forward():
    model = build_backbone(make_cfg(GOLDEN_CONFIGS["atss_dcnv2_R_50_FPN_1x"])).eval()
    assert type(model.body.layer1[0].conv2) is nn.Conv2d
    assert model.body.layer2[0].conv2.offset.out_channels == 27  # modulated: 9 × (2 + 1)
    with torch.no_grad():
        pyramid = model(torch.randn(1, 3, 64, 64))
    assert [tuple(p.shape) for p in pyramid] == [
        (1, 256, 8, 8), (1, 256, 4, 4), (1, 256, 2, 2), (1, 256, 1, 1), (1, 256, 1, 1)]
    assert all(torch.isfinite(p).all() for p in pyramid)


# --------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("freeze_at,frozen", [
    (0, set()),
    (2, {"stem", "layer1"}),
    (4, {"stem", "layer1", "layer2", "layer3"}),
])
def test_freeze_conv_body_at(freeze_at, frozen):
    model = build_backbone(make_cfg(extra=["MODEL.BACKBONE.FREEZE_CONV_BODY_AT", freeze_at]))
    model.train()
    pyramid = model(torch.randn(1, 3, 32, 32))
    sum(p.sum() for p in pyramid).backward()
    for name, param in model.named_parameters():
        stage = name.split(".")[1]
        is_frozen = name.startswith("body.") and stage in frozen
        assert param.requires_grad is not is_frozen, name
        assert (param.grad is None) is is_frozen, name


def test_mobilenet_freezes_leading_features():
    model = build_backbone(make_cfg(extra=["MODEL.BACKBONE.CONV_BODY", "MNV2-FPN-RETINANET",
                                           "MODEL.BACKBONE.FREEZE_CONV_BODY_AT", 3]))
    for name, param in model.body.named_parameters():
        assert param.requires_grad is (int(name.split(".")[1]) >= 3), name


def test_group_norm_variant():
    model = build_backbone(make_cfg(extra=["MODEL.RESNETS.STEM_FUNC", "StemWithGN",
                                           "MODEL.RESNETS.TRANS_FUNC", "BottleneckWithGN"]))
    norms = [m for m in model.body.modules() if isinstance(m, nn.GroupNorm)]
    # stem + 16 blocks × 3 + 4 projections, all GroupNorm(32 groups, eps 1e-5)
    assert len(norms) == 53
    assert all(n.num_groups == 32 and n.eps == 1e-5 for n in norms)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    # FREEZE_CONV_BODY_AT 2 now also freezes the stem's and layer1's GroupNorm affines.
    assert not model.body.stem.bn1.weight.requires_grad
    assert model.body.layer2[0].bn1.weight.requires_grad
    with torch.no_grad():
        assert len(model(torch.randn(1, 3, 64, 64))) == 5


def test_group_norm_comes_from_the_config_given():
    """A cloned config with 16 GroupNorm groups (and eps 1e-3) builds 16-group norms in the
    ResNet stem, blocks and the FPN, while the global config still says 32."""
    from atss_core.config import cfg as global_cfg
    model = build_backbone(make_cfg(extra=["MODEL.RESNETS.STEM_FUNC", "StemWithGN",
                                           "MODEL.RESNETS.TRANS_FUNC", "BottleneckWithGN",
                                           "MODEL.FPN.USE_GN", True,
                                           "MODEL.GROUP_NORM.NUM_GROUPS", 16, "MODEL.GROUP_NORM.EPSILON", 1e-3]))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 53 + 6  # body as above + the P3-P5 FPN: 3 lateral and 3 output convs
    assert all(n.num_groups == 16 and n.eps == 1e-3 for n in norms)
    assert global_cfg.MODEL.GROUP_NORM.NUM_GROUPS == 32


# --------------------------------------------------------------------------- user errors


def test_unknown_conv_body_names_the_key():
    with pytest.raises(KeyError, match="MODEL.BACKBONE.CONV_BODY 'R-42-FPN'"):
        build_backbone(make_cfg(extra=["MODEL.BACKBONE.CONV_BODY", "R-42-FPN"]))


def test_unknown_block_names_the_key():
    with pytest.raises(KeyError, match="MODEL.RESNETS.TRANS_FUNC"):
        build_backbone(make_cfg(extra=["MODEL.RESNETS.TRANS_FUNC", "Nope"]))
