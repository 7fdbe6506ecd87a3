"""Anchor generator and ATSS BoxCoder against the original's recorded outputs and hand-worked values."""
import math

import pytest
import torch

from atss_core.config import cfg
from atss_core.modeling.rpn.anchor_generator import (
    AnchorGenerator, generate_anchors, make_anchor_generator_atss)
from atss_core.modeling.rpn.atss.box_coder import BoxCoder
from conftest import DEVICES, load_golden


def _cfg(*overrides):
    config = cfg.clone()
    config.merge_from_list(list(overrides))
    return config


def _run_generator(generator, grid_hw, num_images, device):
    features = [torch.zeros(num_images, 1, h, w, device=device) for h, w in grid_hw]
    return generator.to(device)(features)


# ---------------------------------------------------------------------------- generate_anchors
@pytest.mark.parametrize("name", ["stride8_size64", "stride16_size128", "stride32_size256",
                                  "stride64_size512", "stride128_size1024", "stride8_size50.8"])
def test_generate_anchors_is_bitwise_the_legacy_float64(name):
    expected = load_golden("components.pt")["generate_anchors_raw_float64"][name]
    stride, size = name.replace("stride", "").split("_size")
    out = generate_anchors(int(stride), (float(size),), (0.5, 1, 2))
    assert out.dtype == torch.float64
    assert torch.equal(out, expected)


def test_generate_anchors_hand_values():
    # stride 8, size 64, ratio 1: 64 x 64 around (4, 4) spans 4 -/+ 31.5.
    assert generate_anchors(8, (64,), (1.0,)).tolist() == [[-27.5, -27.5, 35.5, 35.5]]
    # stride 16, size 128, ratio 0.5: w = round(sqrt(256 / 0.5)) = 23, h = round(11.5) = 12 (half to
    # even), both x 128/16 = 8 -> 184 x 96 around (8, 8).
    assert generate_anchors(16, (128,), (0.5,)).tolist() == [[-83.5, -39.5, 99.5, 55.5]]
    # Ratio-major order: (r0, s0), (r0, s1), (r1, s0), (r1, s1).
    both = generate_anchors(8, (32, 64), (1.0, 2.0))
    assert torch.equal(both[1], generate_anchors(8, (64,), (1.0,))[0])
    assert torch.equal(both[2], generate_anchors(8, (32,), (2.0,))[0])


# ---------------------------------------------------------------------------- AnchorGenerator
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["atss_default", "atss_9_anchors", "atss_default_R50_grid"])
def test_anchor_generator_matches_original(case, device):
    golden = load_golden("components.pt")["anchor_generator"][case]
    overrides = load_golden("components.json")["anchor_generator"][case]["overrides"]
    generator = make_anchor_generator_atss(_cfg(*overrides))
    for ours, theirs in zip(generator.cell_anchors, golden["cell_anchors"]):
        assert ours.dtype == torch.float32
        assert torch.equal(ours, theirs)

    anchors = _run_generator(generator, golden["grid_hw"].tolist(), len(golden["anchors"]), device)
    # one tensor per level, shared by the images: the original's per-image anchors all equal it
    assert len(anchors) == len(golden["anchors"][0])
    for per_image in golden["anchors"]:
        for level, expected in enumerate(per_image):
            assert torch.equal(anchors[level].cpu(), expected)


def test_anchor_layout_is_row_major_with_anchors_of_a_cell_consecutive():
    generator = make_anchor_generator_atss(
        _cfg("MODEL.ATSS.ASPECT_RATIOS", (0.5, 1.0, 2.0), "MODEL.ATSS.SCALES_PER_OCTAVE", 3))
    assert generator.num_anchors_per_location() == [9] * 5
    height, width, stride = 2, 3, 16
    level = generator.grid_anchors([(1, 1), (height, width)])[1]  # level 1: stride 16
    cell = list(generator.cell_anchors)[1]
    grid = level.view(height, width, 9, 4)
    for y in range(height):
        for x in range(width):
            shift = torch.tensor([x * stride, y * stride, x * stride, y * stride], dtype=torch.float32)
            assert torch.equal(grid[y, x], cell + shift)


def test_anchors_are_made_once_per_feature_map_size():
    generator = AnchorGenerator(sizes=(8, 16), aspect_ratios=(1.0,), anchor_strides=(8, 16))
    first = _run_generator(generator, [(4, 6), (2, 3)], 2, "cpu")
    again = _run_generator(generator, [(4, 6), (2, 3)], 1, "cpu")  # batch size plays no part
    assert all(a is b for a, b in zip(first, again))
    other = _run_generator(generator, [(5, 6), (3, 3)], 2, "cpu")
    assert [len(level) for level in other] == [30, 9]
    assert all(torch.equal(a, b) for a, b in zip(other, generator.grid_anchors([(5, 6), (3, 3)])))
    # anchors made under inference_mode are not handed to autograd code afterwards
    with torch.inference_mode():
        inference = _run_generator(generator, [(4, 6), (2, 3)], 2, "cpu")
    assert all(a.is_inference() and not b.is_inference() for a, b in zip(inference, first))
    weight = torch.ones(4, requires_grad=True)
    (_run_generator(generator, [(4, 6), (2, 3)], 2, "cpu")[0] * weight).sum().backward()
    # loading other cell anchors (a state dict) drops what was made from the old ones
    state = {key: value + 1 for key, value in generator.state_dict().items()}
    generator.load_state_dict(state)
    shifted = _run_generator(generator, [(4, 6), (2, 3)], 2, "cpu")
    assert all(torch.equal(a + 1, b) for a, b in zip(first, shifted))
    # and the cache stays bounded
    for width in range(1, 3 * AnchorGenerator.CACHE_SIZE):
        _run_generator(generator, [(1, width), (1, 1)], 1, "cpu")
    assert len(generator._cache) == AnchorGenerator.CACHE_SIZE


def test_cell_anchors_are_float32_buffers_named_like_the_original():
    expected = {key: spec for key, spec in load_golden("keys_atss_R_50_FPN_1x.json")["keys"].items()
                if key.startswith("rpn.anchor_generator.")}
    generator = make_anchor_generator_atss(cfg)
    state = {f"rpn.anchor_generator.{key}": value for key, value in generator.state_dict().items()}
    assert sorted(state) == sorted(expected)
    for key, spec in expected.items():
        assert list(state[key].shape) == spec["shape"] and state[key].dtype == torch.float32
    assert not list(generator.parameters())


def test_mismatched_sizes_and_strides_are_reported():
    with pytest.raises(ValueError, match="ANCHOR_STRIDES"):
        make_anchor_generator_atss(_cfg("MODEL.ATSS.ANCHOR_SIZES", (64, 128)))


# ---------------------------------------------------------------------------- BoxCoder
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("regression_type", ["BOX", "POINT"])
def test_box_coder_matches_original(regression_type, device):
    golden = load_golden("components.pt")["box_coder"]
    coder = BoxCoder.from_config(_cfg("MODEL.ATSS.REGRESSION_TYPE", regression_type))
    anchors, gt = golden["anchors"].to(device), golden["gt"].to(device)
    preds = golden["preds_box" if regression_type == "BOX" else "preds_point"].to(device)
    expected = golden[regression_type]
    encoded = coder.encode(gt, anchors)
    torch.testing.assert_close(encoded.cpu(), expected["encode_gt"], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(coder.decode(preds, anchors).cpu(), expected["decode_preds"],
                               rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(coder.decode(encoded, anchors).cpu(), expected["decode_encode_gt"],
                               rtol=1e-6, atol=1e-4)


def test_box_coder_float64_matches_original():
    golden = load_golden("components.pt")["box_coder"]
    coder = BoxCoder.from_config(cfg)
    anchors, gt = golden["anchors"].double(), golden["gt"].double()
    torch.testing.assert_close(coder.encode(gt, anchors), golden["BOX_float64"]["encode_gt"],
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(coder.decode(golden["preds_box"].double(), anchors),
                               golden["BOX_float64"]["decode_preds"], rtol=1e-12, atol=1e-10)


def test_box_decode_clamps_log_scale_and_uses_plus_one_widths():
    coder = BoxCoder.from_config(cfg)
    anchors = torch.tensor([[0.0, 0.0, 15.0, 31.0]], dtype=torch.float64)  # 16 x 32 ("+1")
    # Zero deltas give the anchor back.
    assert coder.decode(torch.zeros(1, 4, dtype=torch.float64), anchors).tolist() == anchors.tolist()
    # dw = dh = 100 (/5 = 20) are clamped to log(1000/16): widths become 1000 and 2000, centre (7.5, 15.5).
    out = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]], dtype=torch.float64), anchors)[0]
    torch.testing.assert_close(out, torch.tensor([7.5 - 499.5, 15.5 - 999.5, 7.5 + 499.5, 15.5 + 999.5],
                                                 dtype=torch.float64))
    # Encoding: dx = 10 * (shift / 16); dw = 5 * log(32 / 16).
    gt = anchors + torch.tensor([[4.0, 0.0, 20.0, 0.0]], dtype=torch.float64)  # centre +12, width 32
    torch.testing.assert_close(coder.encode(gt, anchors)[0],
                               torch.tensor([10 * 12 / 16, 0.0, 5 * math.log(2), 0.0], dtype=torch.float64))


def test_point_coder_hand_values():
    coder = BoxCoder.from_config(_cfg("MODEL.ATSS.REGRESSION_TYPE", "POINT"))
    assert coder.point_scale == 8
    anchors = torch.tensor([[-27.5, -27.5, 35.5, 35.5]], dtype=torch.float64)  # centre (4, 4), 64 wide
    gt = torch.tensor([[0.0, -12.0, 36.0, 20.0]], dtype=torch.float64)  # l, t, r, b = 4, 16, 32, 16
    expected = torch.tensor([[4.0, 16.0, 32.0, 16.0]], dtype=torch.float64) * 8 / 64
    torch.testing.assert_close(coder.encode(gt, anchors), expected)
    torch.testing.assert_close(coder.decode(expected, anchors), gt)


@pytest.mark.parametrize("regression_type", ["BOX", "POINT"])
def test_decode_inverts_encode(regression_type):
    coder = BoxCoder.from_config(_cfg("MODEL.ATSS.REGRESSION_TYPE", regression_type))
    generator = torch.Generator().manual_seed(1)
    xy = torch.rand(50, 2, generator=generator, dtype=torch.float64) * 300
    anchors = torch.cat([xy, xy + 8 + torch.rand(50, 2, generator=generator, dtype=torch.float64) * 100], 1)
    gt = anchors + (torch.rand(50, 4, generator=generator, dtype=torch.float64) - 0.5) * 10
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt, rtol=0, atol=1e-9)


def test_unknown_regression_type_is_reported():
    with pytest.raises(ValueError, match="REGRESSION_TYPE"):
        BoxCoder.from_config(_cfg("MODEL.ATSS.REGRESSION_TYPE", "CORNERS"))
