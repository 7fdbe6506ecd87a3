"""BoxList, boxlist_ops and ImageList against hand-computed cases, torchvision and golden data."""
import sys
import types

import pytest
import torch
import torchvision

from atss_core.structures.bounding_box import FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM, BoxList
from atss_core.structures.boxlist_ops import (
    box_iou_plus_one,
    boxlist_iou,
    boxlist_ml_nms,
    boxlist_nms,
    cat_boxlist,
    remove_small_boxes,
)
from atss_core.structures.image_list import ImageList, to_image_list
from conftest import DEVICES, load_golden


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def empty_boxlist(size=(10, 8), mode="xyxy"):
    b = BoxList(torch.zeros(0, 4), size, mode)
    b.add_field("labels", torch.zeros(0, dtype=torch.int64))
    return b


class GeometryField:
    """A non-tensor field (like masks) that records the geometric calls it receives."""

    def __init__(self, log=()):
        self.log = list(log)

    def resize(self, size, *args, **kwargs):
        return GeometryField(self.log + [("resize", tuple(size), args, kwargs)])

    def transpose(self, method):
        return GeometryField(self.log + [("transpose", method)])

    def crop(self, box):
        return GeometryField(self.log + [("crop", tuple(box))])


# --------------------------------------------------------------------------- BoxList
class TestBoxListConstruction:
    def test_stores_float32_boxes_size_and_mode(self):
        b = BoxList([[1, 2, 3, 4]], [10, 20])
        assert b.bbox.dtype == torch.float32
        assert b.bbox.tolist() == [[1.0, 2.0, 3.0, 4.0]]
        assert b.size == (10, 20) and b.mode == "xyxy" and len(b) == 1

    def test_float64_input_is_cast_to_float32(self):
        b = BoxList(torch.tensor([[0.5, 1.5, 2.5, 3.5]], dtype=torch.float64), (5, 5))
        assert b.bbox.dtype == torch.float32
        assert b.bbox.tolist() == [[0.5, 1.5, 2.5, 3.5]]

    @pytest.mark.parametrize("bad", [torch.zeros(3, 5), torch.zeros(4), torch.zeros(2, 2, 4)])
    def test_wrong_shape_is_a_one_line_error(self, bad):
        with pytest.raises(ValueError, match=r"shape \(N, 4\)") as err:
            BoxList(bad, (10, 10))
        assert "\n" not in str(err.value)

    def test_bad_mode(self):
        with pytest.raises(ValueError, match="'xyxy' or 'xywh'"):
            BoxList(boxes([0, 0, 1, 1]), (10, 10), mode="cxcywh")
        with pytest.raises(ValueError, match="'xyxy' or 'xywh'"):
            BoxList(boxes([0, 0, 1, 1]), (10, 10)).convert("yxyx")

    @pytest.mark.parametrize("size", [10, (10,), (1, 2, 3)])
    def test_bad_image_size(self, size):
        with pytest.raises(ValueError, match="image_size"):
            BoxList(boxes([0, 0, 1, 1]), size)

    def test_empty_inputs(self):
        assert len(BoxList([], (4, 4))) == 0
        assert BoxList(torch.zeros(0, 4), (4, 4)).bbox.shape == (0, 4)


class TestBoxListFields:
    def test_add_get_has_fields(self):
        b = BoxList(boxes([0, 0, 1, 1], [1, 1, 2, 2]), (5, 5))
        labels = torch.tensor([3, 7])
        b.add_field("labels", labels)
        b.add_field("scores", torch.tensor([0.5, 0.25]))
        assert b.get_field("labels") is labels
        assert b.has_field("scores") and not b.has_field("masks")
        assert b.fields() == ["labels", "scores"]

    def test_missing_field_names_available_ones(self):
        b = BoxList(boxes([0, 0, 1, 1]), (5, 5))
        b.add_field("labels", torch.tensor([1]))
        with pytest.raises(KeyError, match=r"no field 'scores'.*\['labels'\]"):
            b.get_field("scores")

    def test_copy_with_fields(self):
        b = BoxList(boxes([0, 0, 1, 1]), (5, 5))
        b.add_field("labels", torch.tensor([1]))
        b.add_field("scores", torch.tensor([0.9]))
        only_labels = b.copy_with_fields("labels")
        assert only_labels.fields() == ["labels"]
        assert only_labels.bbox is b.bbox
        assert b.copy_with_fields(["labels", "scores"]).fields() == ["labels", "scores"]
        with pytest.raises(KeyError, match="masks"):
            b.copy_with_fields(["masks"])

    def test_repr(self):
        b = BoxList(boxes([0, 0, 1, 1], [0, 0, 2, 2]), (640, 480))
        assert repr(b) == "BoxList(num_boxes=2, image_width=640, image_height=480, mode=xyxy)"


class TestBoxListGeometry:
    def test_area_counts_pixels_inclusively(self):
        b = BoxList(boxes([0, 0, 9, 9], [2, 3, 5, 7], [4, 4, 4, 4], [0, 0, 0.5, 1.5]), (20, 20))
        # (x2 - x1 + 1) * (y2 - y1 + 1)
        torch.testing.assert_close(b.area(), torch.tensor([100.0, 20.0, 1.0, 1.5 * 2.5]))
        torch.testing.assert_close(b.convert("xywh").area(), b.area())

    def test_convert_round_trip_with_plus_one(self):
        b = BoxList(boxes([2, 3, 5, 7], [0, 0, 0, 0]), (10, 10))
        b.add_field("labels", torch.tensor([1, 2]))
        xywh = b.convert("xywh")
        assert xywh.mode == "xywh"
        assert xywh.bbox.tolist() == [[2, 3, 4, 5], [0, 0, 1, 1]]
        assert xywh.get_field("labels") is b.get_field("labels")
        assert xywh.convert("xyxy").bbox.tolist() == b.bbox.tolist()
        assert b.convert("xyxy") is b

    def test_xywh_below_one_pixel_clamps_to_zero_extent(self):
        b = BoxList(boxes([5, 5, 0.5, 0]), (10, 10), mode="xywh")
        assert b.convert("xyxy").bbox.tolist() == [[5, 5, 5, 5]]

    def test_resize_uniform_and_per_axis(self):
        b = BoxList(boxes([1, 2, 3, 4]), (10, 20))
        b.add_field("labels", torch.tensor([5]))
        doubled = b.resize((20, 40))
        assert doubled.bbox.tolist() == [[2, 4, 6, 8]] and doubled.size == (20, 40)
        assert doubled.get_field("labels").tolist() == [5]
        stretched = b.resize((30, 10))  # x * 3, y * 0.5
        assert stretched.bbox.tolist() == [[3, 1, 9, 2]] and stretched.size == (30, 10)

    def test_resize_keeps_xywh_mode(self):
        b = BoxList(boxes([1, 2, 3, 4]), (10, 20)).convert("xywh")  # w = h = 3
        stretched = b.resize((30, 10))
        assert stretched.mode == "xywh"
        # xyxy (1,2,3,4) -> (3,1,9,2) -> xywh (3,1,7,2)
        assert stretched.bbox.tolist() == [[3, 1, 7, 2]]

    def test_flip_left_right_is_w_minus_x_minus_one(self):
        b = BoxList(boxes([1, 2, 3, 4], [0, 0, 9, 7]), (10, 8))
        flipped = b.transpose(FLIP_LEFT_RIGHT)
        assert flipped.bbox.tolist() == [[6, 2, 8, 4], [0, 0, 9, 7]]
        assert flipped.transpose(FLIP_LEFT_RIGHT).bbox.tolist() == b.bbox.tolist()

    def test_flip_top_bottom_is_h_minus_y(self):
        b = BoxList(boxes([1, 2, 3, 4]), (10, 20))
        assert b.transpose(FLIP_TOP_BOTTOM).bbox.tolist() == [[1, 16, 3, 18]]

    def test_flip_keeps_mode_and_fields(self):
        b = BoxList(boxes([1, 2, 3, 4]), (10, 20)).convert("xywh")
        b.add_field("scores", torch.tensor([0.5]))
        flipped = b.transpose(FLIP_LEFT_RIGHT)
        assert flipped.mode == "xywh"
        assert flipped.bbox.tolist() == [[6, 2, 3, 3]]
        assert flipped.get_field("scores").tolist() == [0.5]

    def test_bad_transpose_method(self):
        with pytest.raises(NotImplementedError, match="FLIP_LEFT_RIGHT"):
            BoxList(boxes([1, 2, 3, 4]), (10, 20)).transpose(2)

    def test_crop_shifts_and_clamps_to_region(self):
        b = BoxList(boxes([0, 0, 5, 5], [3, 4, 10, 12], [9, 9, 12, 12]), (20, 20))
        cropped = b.crop((2, 2, 8, 8))
        assert cropped.size == (6, 6)
        assert cropped.bbox.tolist() == [[0, 0, 3, 3], [1, 2, 6, 6], [6, 6, 6, 6]]

    def test_clip_to_image(self):
        rows = ([-2, -1, 12, 9], [3, 3, 3, 5], [5, 2, 4, 6], [1, 1, 4, 4])
        b = BoxList(boxes(*rows), (10, 8))
        b.add_field("labels", torch.tensor([1, 2, 3, 4]))
        kept = b.clip_to_image(remove_empty=True)
        assert kept.bbox.tolist() == [[0, 0, 9, 7], [1, 1, 4, 4]]
        assert kept.get_field("labels").tolist() == [1, 4]
        # Clamped in place, as the original does.
        assert b.bbox[0].tolist() == [0, 0, 9, 7]

        b = BoxList(boxes(*rows), (10, 8))
        assert b.clip_to_image(remove_empty=False) is b
        assert b.bbox.tolist() == [[0, 0, 9, 7], [3, 3, 3, 5], [5, 2, 4, 6], [1, 1, 4, 4]]

    def test_clip_to_image_xywh(self):
        b = BoxList(boxes([-2, 1, 20, 3]), (10, 8), mode="xywh")  # xyxy (-2, 1, 17, 3)
        clipped = b.clip_to_image()
        assert clipped.mode == "xywh"
        assert clipped.bbox.tolist() == [[0, 1, 10, 3]]

    def test_non_tensor_fields_follow_geometry(self):
        b = BoxList(boxes([1, 2, 3, 4]), (10, 20))
        b.add_field("masks", GeometryField())
        assert b.resize((20, 40), "extra", k=1).get_field("masks").log == [
            ("resize", (20, 40), ("extra",), {"k": 1})]
        assert b.transpose(FLIP_TOP_BOTTOM).get_field("masks").log == [
            ("transpose", FLIP_TOP_BOTTOM)]
        assert b.crop((0, 0, 5, 5)).get_field("masks").log == [("crop", (0, 0, 5, 5))]

    def test_transforms_match_golden(self):
        """BoxList.resize then transpose(FLIP_LEFT_RIGHT), as the original's transforms ran them."""
        golden = load_golden("transforms.pt")
        source = BoxList(golden["input_boxes_xyxy"], (200, 150))
        for case, flipped in [("test", False), ("train_flip1", True), ("small_test", False),
                              ("small_train_flip1", True), ("small_test_maxsize_clamp", False)]:
            expected = golden["cases"][case]
            size = tuple(expected["boxlist_size_wh"].tolist())
            result = source.resize(size)
            if flipped:
                result = result.transpose(FLIP_LEFT_RIGHT)
            assert result.size == size
            torch.testing.assert_close(result.bbox, expected["boxes_xyxy"], rtol=0, atol=1e-4)


class TestBoxListIndexing:
    def make(self):
        b = BoxList(boxes([0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3], [3, 3, 4, 4]), (10, 10))
        b.add_field("labels", torch.tensor([10, 11, 12, 13]))
        return b

    def test_bool_mask(self):
        picked = self.make()[torch.tensor([True, False, True, False])]
        assert picked.bbox[:, 0].tolist() == [0, 2]
        assert picked.get_field("labels").tolist() == [10, 12]

    def test_index_tensor_reorders_and_repeats(self):
        picked = self.make()[torch.tensor([3, 0, 3])]
        assert picked.bbox[:, 0].tolist() == [3, 0, 3]
        assert picked.get_field("labels").tolist() == [13, 10, 13]

    def test_python_list_of_indices(self):
        picked = self.make()[[0, 2]]
        assert picked.get_field("labels").tolist() == [10, 12]
        assert len(self.make()[[]]) == 0

    def test_slice(self):
        picked = self.make()[1:3]
        assert len(picked) == 2 and picked.get_field("labels").tolist() == [11, 12]
        assert picked.size == (10, 10) and picked.mode == "xyxy"

    def test_all_false_mask_gives_empty(self):
        picked = self.make()[torch.zeros(4, dtype=torch.bool)]
        assert len(picked) == 0 and picked.get_field("labels").shape == (0,)

    @pytest.mark.parametrize("device", DEVICES)
    def test_to_device(self, device):
        moved = self.make().to(device)
        assert moved.bbox.device.type == device
        assert moved.get_field("labels").device.type == device
        assert moved.bbox.cpu().tolist() == self.make().bbox.tolist()


class TestEmptyBoxList:
    def test_operations_on_empty(self):
        b = empty_boxlist()
        assert b.area().shape == (0,)
        assert b.convert("xywh").bbox.shape == (0, 4)
        assert len(b.resize((20, 16))) == 0
        assert len(b.transpose(FLIP_LEFT_RIGHT)) == 0
        assert len(b.crop((0, 0, 5, 5))) == 0
        assert len(b.clip_to_image()) == 0
        assert len(remove_small_boxes(b, 1)) == 0
        other = BoxList(boxes([0, 0, 3, 3]), (10, 8))
        assert boxlist_iou(b, other).shape == (0, 1)
        assert boxlist_iou(other, b).shape == (1, 0)
        assert repr(b) == "BoxList(num_boxes=0, image_width=10, image_height=8, mode=xyxy)"

    def test_cat_with_empty(self):
        b = BoxList(boxes([1, 1, 3, 3]), (10, 8))
        b.add_field("labels", torch.tensor([4]))
        joined = cat_boxlist([empty_boxlist(), b, empty_boxlist()])
        assert joined.bbox.tolist() == [[1, 1, 3, 3]]
        assert joined.get_field("labels").tolist() == [4]


# ------------------------------------------------------------------------ boxlist_ops
class TestBoxlistIou:
    def test_hand_computed(self):
        size = (30, 30)
        a = BoxList(boxes([0, 0, 9, 9]), size)
        b = BoxList(boxes([0, 0, 9, 9], [5, 5, 14, 14], [9, 0, 18, 9], [10, 0, 19, 9],
                          [20, 20, 25, 25]), size)
        # Areas are 100 with "+1"; overlaps 100, 25, 10 (one shared pixel column), 0, 0.
        expected = torch.tensor([[1.0, 25 / 175, 10 / 190, 0.0, 0.0]])
        torch.testing.assert_close(boxlist_iou(a, b), expected)

    def test_matches_torchvision_with_inclusive_corners(self):
        generator = torch.Generator().manual_seed(1)
        xy = torch.rand(40, 2, generator=generator) * 50
        wh = torch.rand(40, 2, generator=generator) * 30
        all_boxes = torch.cat([xy, xy + wh], dim=1)
        a, b = BoxList(all_boxes[:15], (100, 90)), BoxList(all_boxes[15:], (100, 90))
        # An inclusive box x1..x2 covers the continuous interval [x1, x2 + 1].
        shift = torch.tensor([0.0, 0.0, 1.0, 1.0])
        expected = torchvision.ops.box_iou(a.bbox + shift, b.bbox + shift)
        torch.testing.assert_close(boxlist_iou(a, b), expected, rtol=1e-5, atol=1e-6)

    def test_xywh_input_is_converted(self):
        a = BoxList(boxes([0, 0, 9, 9]), (30, 30))
        b = BoxList(boxes([5, 5, 14, 14]), (30, 30)).convert("xywh")
        torch.testing.assert_close(boxlist_iou(a, b), torch.tensor([[25 / 175]]))

    def test_size_mismatch_raises(self):
        a = BoxList(boxes([0, 0, 9, 9]), (30, 30))
        b = BoxList(boxes([0, 0, 9, 9]), (32, 32))
        with pytest.raises(RuntimeError, match=r"\(30, 30\) and \(32, 32\)") as err:
            boxlist_iou(a, b)
        assert "\n" not in str(err.value)


class TestCatBoxlist:
    def test_concatenates_boxes_and_fields(self):
        a = BoxList(boxes([0, 0, 1, 1]), (10, 10))
        a.add_field("labels", torch.tensor([1]))
        a.add_field("scores", torch.tensor([0.5]))
        b = BoxList(boxes([2, 2, 3, 3], [4, 4, 5, 5]), (10, 10))
        b.add_field("scores", torch.tensor([0.7, 0.8]))
        b.add_field("labels", torch.tensor([2, 3]))
        joined = cat_boxlist([a, b])
        assert joined.bbox.tolist() == [[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]]
        assert joined.get_field("labels").tolist() == [1, 2, 3]
        torch.testing.assert_close(joined.get_field("scores"), torch.tensor([0.5, 0.7, 0.8]))
        assert joined.size == (10, 10) and joined.mode == "xyxy"

    def test_mismatches_raise(self):
        a = BoxList(boxes([0, 0, 1, 1]), (10, 10))
        with pytest.raises(ValueError, match="image size"):
            cat_boxlist([a, BoxList(boxes([0, 0, 1, 1]), (10, 12))])
        with pytest.raises(ValueError, match="mode"):
            cat_boxlist([a, a.convert("xywh")])
        labelled = BoxList(boxes([0, 0, 1, 1]), (10, 10))
        labelled.add_field("labels", torch.tensor([1]))
        with pytest.raises(ValueError, match="fields"):
            cat_boxlist([a, labelled])
        with pytest.raises(ValueError, match="non-empty"):
            cat_boxlist([])
        with pytest.raises(TypeError, match="Tensor"):
            cat_boxlist([a, torch.zeros(1, 4)])


def test_remove_small_boxes_uses_inclusive_sizes():
    b = BoxList(boxes([0, 0, 1, 1], [0, 0, 0.5, 5], [0, 0, 5, 0.9], [2, 2, 2, 2]), (10, 10))
    b.add_field("labels", torch.tensor([1, 2, 3, 4]))
    # Inclusive sizes: 2x2, 1.5x6, 6x1.9, 1x1.
    assert remove_small_boxes(b, 2).get_field("labels").tolist() == [1]
    assert remove_small_boxes(b, 1.5).get_field("labels").tolist() == [1, 2, 3]
    assert remove_small_boxes(b, 0).get_field("labels").tolist() == [1, 2, 3, 4]


class TestNmsWrappers:
    """Wiring of boxlist_nms / boxlist_ml_nms, with a stand-in for atss_core.layers."""

    @pytest.fixture
    def calls(self, monkeypatch):
        recorded = []

        def fake_nms(boxes_, scores, threshold):
            recorded.append(("nms", boxes_.clone(), scores.clone(), threshold))
            return torch.tensor([2, 0, 1])

        def fake_ml_nms(boxes_, scores, labels, threshold):
            recorded.append(("ml_nms", boxes_.clone(), scores.clone(), labels.clone(), threshold))
            return torch.tensor([1, 2])

        layers = types.ModuleType("atss_core.layers")
        layers.nms, layers.ml_nms = fake_nms, fake_ml_nms
        monkeypatch.setitem(sys.modules, "atss_core.layers", layers)
        return recorded

    def make(self):
        b = BoxList(boxes([0, 0, 3, 3], [1, 1, 4, 4], [5, 5, 9, 9]), (10, 10))
        b.add_field("scores", torch.tensor([0.9, 0.8, 0.7]))
        b.add_field("labels", torch.tensor([1, 1, 2]))
        return b

    def test_nms_selects_kept_in_returned_order(self, calls):
        b = self.make().convert("xywh")
        kept = boxlist_nms(b, 0.5)
        (name, passed_boxes, passed_scores, threshold), = calls
        assert name == "nms" and threshold == 0.5
        assert passed_boxes.tolist() == self.make().bbox.tolist()  # given as xyxy
        assert passed_scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
        assert kept.mode == "xywh"
        assert kept.get_field("labels").tolist() == [2, 1, 1]
        assert len(boxlist_nms(self.make(), 0.5, max_proposals=2)) == 2

    def test_ml_nms_passes_labels(self, calls):
        kept = boxlist_ml_nms(self.make(), 0.6, max_proposals=1)
        (name, _, _, labels, threshold), = calls
        assert name == "ml_nms" and threshold == 0.6 and labels.tolist() == [1, 1, 2]
        assert kept.bbox.tolist() == [[1, 1, 4, 4]]

    def test_non_positive_threshold_skips_nms(self, calls):
        b = self.make()
        assert boxlist_nms(b, 0) is b and boxlist_ml_nms(b, -1) is b
        assert calls == []


def test_nms_with_real_layers_uses_inclusive_iou():
    """Two boxes with IoU 90/110 (with "+1") > 0.6: the lower score goes unless labels differ."""
    b = BoxList(boxes([0, 0, 9, 9], [1, 0, 10, 9], [30, 30, 39, 39]), (50, 50))
    b.add_field("scores", torch.tensor([0.8, 0.9, 0.5]))
    b.add_field("labels", torch.tensor([1, 1, 1]))
    assert sorted(boxlist_nms(b, 0.6).get_field("scores").tolist()) == pytest.approx([0.5, 0.9])
    assert sorted(boxlist_ml_nms(b, 0.6).get_field("scores").tolist()) == pytest.approx([0.5, 0.9])
    b.add_field("labels", torch.tensor([1, 2, 1]))
    assert len(boxlist_ml_nms(b, 0.6)) == 3


def test_box_iou_plus_one_on_integer_boxes():
    """Integer boxes give the float IoU of the same boxes: 10x10 and 10x10 shifted by 1 -> 90 / 110."""
    a = torch.tensor([[0, 0, 9, 9]])
    b = torch.tensor([[1, 0, 10, 9], [20, 20, 29, 29]])
    iou = box_iou_plus_one(a[:, None], b[None])
    assert iou.dtype == torch.float32
    assert iou[0].tolist() == pytest.approx([90 / 110, 0.0])
    torch.testing.assert_close(iou, box_iou_plus_one(a.float()[:, None], b.float()[None]), rtol=0, atol=0)


# ------------------------------------------------------------------------ ImageList
class TestToImageList:
    def images(self):
        generator = torch.Generator().manual_seed(0)
        return [torch.rand(3, 5, 7, generator=generator) + 1,
                torch.rand(3, 6, 4, generator=generator) + 1]

    def test_gradients_reach_images_that_require_grad(self):
        first, second = (image.requires_grad_() for image in self.images())
        batch = to_image_list([first, second], size_divisible=4)
        weights = torch.arange(batch.tensors.numel(), dtype=torch.float32).view_as(batch.tensors)
        (batch.tensors * weights).sum().backward()
        # d(sum(w * padded)) / d(image) is the weight at the image's place in the padded batch.
        torch.testing.assert_close(first.grad, weights[0, :, :5, :7], rtol=0, atol=0)
        torch.testing.assert_close(second.grad, weights[1, :, :6, :4], rtol=0, atol=0)

    def test_pads_bottom_right_with_zeros(self):
        first, second = self.images()
        batch = to_image_list([first, second])
        assert batch.tensors.shape == (2, 3, 6, 7)
        assert [tuple(s) for s in batch.image_sizes] == [(5, 7), (6, 4)]
        assert torch.equal(batch.tensors[0, :, :5, :7], first)
        assert torch.equal(batch.tensors[1, :, :6, :4], second)
        assert batch.tensors[0, :, 5:].abs().sum() == 0
        assert batch.tensors[1, :, :, 4:].abs().sum() == 0

    def test_size_divisible_rounds_up(self):
        batch = to_image_list(self.images(), size_divisible=4)
        assert batch.tensors.shape == (2, 3, 8, 8)
        assert [tuple(s) for s in batch.image_sizes] == [(5, 7), (6, 4)]
        assert to_image_list(self.images(), size_divisible=7).tensors.shape == (2, 3, 7, 7)

    def test_single_tensor(self):
        image = self.images()[0]
        batch = to_image_list(image)
        assert batch.tensors.shape == (1, 3, 5, 7) and tuple(batch.image_sizes[0]) == (5, 7)
        padded = to_image_list(image, size_divisible=32)
        assert padded.tensors.shape == (1, 3, 32, 32)
        assert torch.equal(padded.tensors[0, :, :5, :7], image)

    def test_batched_tensor(self):
        stacked = torch.ones(2, 3, 5, 7)
        batch = to_image_list(stacked)
        assert batch.tensors is stacked
        assert [tuple(s) for s in batch.image_sizes] == [(5, 7), (5, 7)]
        padded = to_image_list(stacked, size_divisible=8)
        assert padded.tensors.shape == (2, 3, 8, 8) and padded.tensors.sum() == 2 * 3 * 5 * 7

    def test_image_list_passes_through(self):
        batch = to_image_list(self.images())
        assert to_image_list(batch, size_divisible=32) is batch

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match=r"image 1 must be a \(C, H, W\) tensor"):
            to_image_list([torch.zeros(3, 4, 4), torch.zeros(4, 4)])
        with pytest.raises(ValueError, match="empty"):
            to_image_list([])
        with pytest.raises(TypeError, match="ndarray"):
            to_image_list(torch.zeros(3, 4, 4).numpy())
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            to_image_list(torch.zeros(1, 1, 3, 4, 4))

    @pytest.mark.parametrize("device", DEVICES)
    def test_to(self, device):
        batch = to_image_list(self.images())
        moved = batch.to(device, dtype=torch.float64)
        assert isinstance(moved, ImageList)
        assert moved.tensors.device.type == device and moved.tensors.dtype == torch.float64
        assert moved.image_sizes == batch.image_sizes
        torch.testing.assert_close(moved.tensors.cpu(), batch.tensors.double())

    def test_matches_golden_batch(self):
        golden = load_golden("model_eval_R50.pt")
        batched = golden["batched_images"]
        sizes = golden["image_sizes_hw"].tolist()
        images = [batched[i, :, :h, :w].clone() for i, (h, w) in enumerate(sizes)]
        batch = to_image_list(images, size_divisible=32)
        assert torch.equal(batch.tensors, batched)
        assert [list(s) for s in batch.image_sizes] == sizes
