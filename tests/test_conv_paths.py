"""Which CPU kernels and passes the detector's convolutions run (behaviour, not timing).

PyTorch's size heuristic sends small-batch 1x1 convs (one thread) and batch-1 convs on small
maps to ``aten::_slow_conv2d_forward`` / ``_backward``; ``OneDNNConv2d`` keeps every conv of the
model off it, and applies the FrozenBatchNorm2d after it inside the conv. The profiler's op names
are the oracle for the path, ``nn.Conv2d`` + ``FrozenBatchNorm2d`` for the values.
"""
import copy

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from atss_core.config import cfg as default_cfg
from atss_core.layers import (FrozenBatchNorm2d, OneDNNConv2d, conv_norm_relu, onednn_conv,
                              use_onednn_convolutions)
from atss_core.modeling.detector import build_detection_model
from atss_core.modeling.fuse import apply_frozen_bn_in_convs
from atss_core.structures.bounding_box import BoxList
from conftest import REPO_ROOT

FUSED_CONV_OP = "mkldnn::_convolution_pointwise"
SLOW_CONV_OPS = ("aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::thnn_conv2d")


@pytest.fixture
def one_thread():
    """One intra-op thread: the setting in which PyTorch sends 1x1 convs to the slow kernel."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def op_names(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def small_detector(config, channels_last):
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(REPO_ROOT / "configs" / config))
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", "cpu", "MODEL.CHANNELS_LAST", channels_last])
    return build_detection_model(cfg)


def two_box_targets(width, height):
    targets = []
    for _ in range(2):
        target = BoxList(torch.tensor([[8.0, 8.0, 60.0, 70.0], [30.0, 20.0, 120.0, 100.0]]), (width, height))
        target.add_field("labels", torch.tensor([1, 2]))
        targets.append(target)
    return targets


def assert_same_values_and_grads(module, reference, images):
    """``module`` and ``reference`` agree on ``images`` in output, input gradient and parameter
    gradients (float rounding apart); returns ``module``'s output."""
    outputs, grads = [], []
    for model in (module, reference):
        inputs = images.clone().requires_grad_()
        output = model(inputs)
        (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum().backward()
        outputs.append(output)
        grads.append([inputs.grad] + [p.grad for p in model.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for grad, reference_grad in zip(grads[0], grads[1]):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-5)
    return outputs[0]


@pytest.mark.parametrize("config", ["atss/atss_R_50_FPN_1x.yaml", "quickstart/atss_mnv2_fpn_shapes.yaml"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_no_slow_conv_in_training_step_or_inference(one_thread, config, channels_last):
    model = small_detector(config, channels_last)
    height, width = 128, 160
    images = torch.randn(2, 3, height, width) * 50

    model.train()
    used = op_names(lambda: sum(model(images, two_box_targets(width, height)).values()).backward())
    assert "aten::mkldnn_convolution" in used  # the profile did see the convolutions
    assert not used & set(SLOW_CONV_OPS), f"training step took {sorted(used & set(SLOW_CONV_OPS))}"
    # Gradients have their parameters' exact strides, as DDP's buckets need (else it warns and copies).
    assert [name for name, p in model.named_parameters()
            if p.grad is not None and p.grad.stride() != p.stride()] == []

    # Batch 1 after prepare_for_inference: the head's convs on P6/P7 are tiny maps.
    model.prepare_for_inference()
    with torch.inference_mode():
        used = op_names(lambda: model(images[:1]))
    assert not used & set(SLOW_CONV_OPS), f"inference took {sorted(used & set(SLOW_CONV_OPS))}"


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("geometry", [
    dict(kernel_size=1),  # pointwise: the matrix-product path when gradients are needed
    dict(kernel_size=1, bias=False),
    dict(kernel_size=1, stride=2),  # strided 1x1 (ResNet downsample): the oneDNN conv path
    dict(kernel_size=3, padding=1, groups=4),  # MobileNet-style grouped 3x3
    dict(kernel_size=3, padding=2, dilation=2),
])
def test_onednn_conv_matches_nn_conv2d_values_and_grads(one_thread, geometry, memory_format):
    reference = nn.Conv2d(8, 12, **geometry)
    fast = use_onednn_convolutions(nn.Sequential(nn.Conv2d(8, 12, **geometry)))[0]
    assert type(fast) is OneDNNConv2d
    fast.load_state_dict(reference.state_dict())  # same names, same parameters
    fast.to(memory_format=memory_format)  # as MODEL.CHANNELS_LAST stores the weights
    images = torch.randn(2, 8, 9, 11).contiguous(memory_format=memory_format)

    output = assert_same_values_and_grads(fast, reference, images)
    assert output.is_contiguous(memory_format=memory_format)
    assert [p.grad.stride() for p in fast.parameters()] == [p.stride() for p in fast.parameters()]
    with torch.no_grad():  # the oneDNN conv for every geometry
        torch.testing.assert_close(fast(images), reference(images), rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_autocast_keep_torch_dispatch():
    conv = use_onednn_convolutions(nn.Sequential(nn.Conv2d(4, 6, kernel_size=1)))[0]
    images = torch.randn(1, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(images).dtype == torch.bfloat16  # autocast still casts the conv
    assert conv.double()(images.double()).dtype == torch.float64


def test_conversion_skips_subclasses_and_other_padding_modes():
    class Custom(nn.Conv2d):
        pass
    model = use_onednn_convolutions(nn.Sequential(
        nn.Conv2d(3, 3, 3), Custom(3, 3, 3), nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")))
    assert [type(layer) for layer in model] == [OneDNNConv2d, Custom, nn.Conv2d]


def random_frozen_norm(channels):
    norm = FrozenBatchNorm2d(channels)
    norm.weight.uniform_(0.5, 2.0)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    return norm


@pytest.mark.parametrize("bias", [False, True])
def test_frozen_norm_applied_in_conv_matches_the_pair(bias):
    reference = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=bias), random_frozen_norm(6))
    linked = apply_frozen_bn_in_convs(use_onednn_convolutions(copy.deepcopy(reference)))
    assert linked[0].frozen_norm is linked[1] and linked[1].applied_by_conv
    assert list(linked.state_dict()) == list(reference.state_dict())  # the norm stays saved where it was
    images = torch.randn(2, 4, 7, 9)

    assert_same_values_and_grads(linked, reference, images)

    moved = copy.deepcopy(linked)
    assert moved[0].frozen_norm is moved[1]  # copies keep the link inside the copy


def test_detector_runs_no_norm_pass_for_frozen_batch_norms(monkeypatch):
    model = small_detector("atss/atss_R_50_FPN_1x.yaml", False).train()
    # Every bottleneck norm, stem norm and downsample norm is linked to its conv.
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 53 and all(norm.applied_by_conv for norm in norms)
    folds = []
    real_fold_into = FrozenBatchNorm2d.fold_into
    monkeypatch.setattr(FrozenBatchNorm2d, "fold_into",
                        lambda norm, *args: folds.append(norm) or real_fold_into(norm, *args))
    height, width = 64, 96
    used = op_names(lambda: sum(model(torch.randn(2, 3, height, width),
                                      two_box_targets(width, height)).values()).backward())
    assert "aten::addcmul" not in used  # FrozenBatchNorm2d's own pass
    # Each norm is folded into its conv once per forward (the fused-ReLU check does not fold).
    assert len(folds) == 53 and {id(norm) for norm in folds} == {id(norm) for norm in norms}


def test_prepare_for_inference_folds_linked_norms_once():
    model = small_detector("atss/atss_R_50_FPN_1x.yaml", False).eval()
    images = torch.randn(1, 3, 64, 96) * 50
    with torch.no_grad():
        before = model.backbone(images)
        model.prepare_for_inference()
        after = model.backbone(images.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, OneDNNConv2d) and m.frozen_norm is not None for m in model.modules())
    for level_before, level_after in zip(before, after):
        torch.testing.assert_close(level_after, level_before, rtol=1e-4, atol=1e-3)


def conv_norm_relu_reference(conv, norm, images, residual):
    """relu(norm(conv(x)) + residual) with torch.nn.functional only."""
    output = norm(nn.functional.conv2d(images, conv.weight, conv.bias, conv.stride, conv.padding,
                                       conv.dilation, conv.groups))
    return torch.relu(output if residual is None else output + residual)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("geometry", [dict(kernel_size=1), dict(kernel_size=3, padding=1, stride=2),
                                      dict(kernel_size=3, padding=2, dilation=2, groups=2)])
def test_conv_norm_relu_fuses_relu_and_residual_without_grad(geometry, with_residual, memory_format,
                                                             monkeypatch):
    reference = nn.Sequential(nn.Conv2d(4, 6, **geometry), random_frozen_norm(6))
    linked = apply_frozen_bn_in_convs(use_onednn_convolutions(copy.deepcopy(reference)))
    images = torch.randn(2, 4, 11, 13).contiguous(memory_format=memory_format)
    with torch.no_grad():
        expected_shape = reference[0](images).shape
        residual = torch.randn(expected_shape).contiguous(memory_format=memory_format) if with_residual else None
        expected = conv_norm_relu_reference(reference[0], reference[1], images, residual)

        used = op_names(lambda: conv_norm_relu(linked[0], linked[1], images, residual))
        output = conv_norm_relu(linked[0], linked[1], images, residual)
        # oneDNN fuses the add for ungrouped NHWC convs only
        fusable = not with_residual or (memory_format == torch.channels_last and geometry.get("groups", 1) == 1)
        if fusable:
            assert FUSED_CONV_OP in used and "aten::relu_" not in used and "aten::add_" not in used
        else:
            assert FUSED_CONV_OP not in used and "aten::add_" in used
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
        assert output.is_contiguous(memory_format=memory_format)

        # bfloat16 autocast: the fused kernel in bfloat16 where oneDNN has bfloat16 kernels for
        # this CPU, else the plain ops (emulated bfloat16); either way close to the float32 result.
        for has_bfloat16 in {onednn_conv.onednn_has_bfloat16(), False}:
            with monkeypatch.context() as patch:
                patch.setattr(onednn_conv, "onednn_has_bfloat16", lambda: has_bfloat16)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    used = op_names(lambda: conv_norm_relu(linked[0], linked[1], images, residual))
                    low = conv_norm_relu(linked[0], linked[1], images, residual)
            assert (FUSED_CONV_OP in used) == (fusable and has_bfloat16)
            assert low.dtype == torch.bfloat16
            torch.testing.assert_close(low.float(), expected, rtol=0.05, atol=0.1)
        # float16 autocast keeps the plain ops (no fused float16 kernel on most CPUs).
        with torch.autocast("cpu", dtype=torch.float16):
            used = op_names(lambda: conv_norm_relu(linked[0], linked[1], images, residual))
        assert FUSED_CONV_OP not in used


def test_conv_norm_relu_keeps_autograd_where_gradients_are_needed():
    reference = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), random_frozen_norm(6))
    linked = apply_frozen_bn_in_convs(use_onednn_convolutions(copy.deepcopy(reference)))
    images = torch.randn(2, 4, 7, 9)
    residual = torch.randn(2, 6, 7, 9)
    used = op_names(lambda: conv_norm_relu(linked[0], linked[1], images, residual))
    assert FUSED_CONV_OP not in used  # the weights need gradients: no fused kernel (it has no backward)
    output = conv_norm_relu(linked[0], linked[1], images, residual)
    output.sum().backward()
    expected = conv_norm_relu_reference(reference[0], reference[1], images, residual)
    expected.sum().backward()
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(linked[0].weight.grad, reference[0].weight.grad, rtol=1e-4, atol=1e-4)


def test_inference_runs_resnet_relus_and_residual_adds_inside_the_convs():
    model = small_detector("atss/atss_R_50_FPN_1x.yaml", True).eval()
    images = torch.randn(1, 3, 64, 96) * 50
    with torch.inference_mode():
        plain = model.backbone(images.contiguous(memory_format=torch.channels_last))
        used = op_names(lambda: model.backbone(images))
        model.prepare_for_inference()
        used_fast = op_names(lambda: model.backbone(images.contiguous(memory_format=torch.channels_last)))
        fast = model.backbone(images.contiguous(memory_format=torch.channels_last))
    for ops in (used, used_fast):  # plain eval and the fast path: no separate ReLU or add pass in ResNet
        assert FUSED_CONV_OP in ops and "aten::relu_" not in ops and "aten::add_" not in ops
    for level_plain, level_fast in zip(plain, fast):
        torch.testing.assert_close(level_fast, level_plain, rtol=1e-4, atol=1e-3)
