"""The whole detector against the golden data recorded from the original ATSS.

* fixture 1 (keys_*.json): state-dict names, shapes, dtypes, parameter/buffer and requires_grad for
  the four reference configs;
* fixture 2 (model_eval_R50.pt): eval forward of R-50-FPN with the golden weight fill: FPN
  features, head outputs, anchors and final detections (as sets), plain and after
  ``prepare_for_inference``;
* fixture 3 (model_train_R50.*): losses, per-anchor targets and gradients after backward;
* batches of unequal image sizes under several SIZE_DIVISIBILITY values, and an image without GT.
"""
import copy
import math

import pytest
import torch

from atss_core.config import cfg as default_cfg
from atss_core.modeling.detector import build_detection_model
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import ImageList
from conftest import DEVICES, REPO_ROOT, load_golden, weightfill
from test_head_postprocess import assert_same_detections, ieee_fp32_convs  # noqa: F401 (autouse)

CONFIG_DIR = REPO_ROOT / "configs" / "atss"
REFERENCE_CONFIGS = ["atss_R_50_FPN_1x", "atss_dcnv2_R_50_FPN_1x", "atss_R_101_FPN_2x", "atss_X_101_32x8d_FPN_2x"]


def build_cfg(name, *options):
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(CONFIG_DIR / f"{name}.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", "cpu", *options])
    cfg.freeze()
    return cfg


def filled_r50(*options):
    model = build_detection_model(build_cfg("atss_R_50_FPN_1x", *options))
    model.load_state_dict(weightfill().fill_state_dict(model.state_dict()), strict=True)
    return model


@pytest.fixture(scope="module")
def cpu_model():
    """R-50-FPN with the golden weight fill, built once for the module (eval mode)."""
    return filled_r50().eval()


@pytest.fixture
def model_on(cpu_model):
    def on(device):
        model = cpu_model if device == "cpu" else copy.deepcopy(cpu_model).to(device)
        model.zero_grad(set_to_none=True)
        return model.eval()
    return on


def golden_images(golden, device):
    sizes = [tuple(size) for size in golden["image_sizes_hw"].tolist()]
    return ImageList(golden["batched_images"].to(device), sizes)


class Recorder:
    """Keeps the outputs of chosen submodules during a forward pass."""

    def __init__(self, **modules):
        self.outputs = {}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.outputs[name] = output
            self.outputs[name + "_inputs"] = inputs
        return hook

    def __enter__(self):
        return self.outputs

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# ----------------------------------------------------------------------------- fixture 1

@pytest.mark.parametrize("config", REFERENCE_CONFIGS)
def test_state_dict_matches_reference_keys(config):
    golden = load_golden(f"keys_{config}.json")
    model = build_detection_model(build_cfg(config))
    parameters = dict(model.named_parameters())
    ours = {}
    for key, tensor in model.state_dict().items():
        is_parameter = key in parameters
        ours[key] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""),
                     "kind": "parameter" if is_parameter else "buffer",
                     "requires_grad": parameters[key].requires_grad if is_parameter else None}
    assert list(ours) == list(golden["keys"]), "state-dict keys or their order differ"
    mismatched = {k: (ours[k], v) for k, v in golden["keys"].items() if ours[k] != v}
    assert not mismatched, f"{len(mismatched)} keys differ, e.g. {next(iter(mismatched.items()))}"
    assert sum(t.numel() for t in model.state_dict().values()) == golden["num_elements"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == golden["num_trainable_parameters"]


# ----------------------------------------------------------------------------- fixture 2

def check_eval_against_golden(model, device):
    golden = load_golden("model_eval_R50.pt")
    with Recorder(backbone=model.backbone, head=model.rpn.head,
                  anchors=model.rpn.anchor_generator) as seen, torch.no_grad():
        detections = model(golden_images(golden, device))
    for level, expected in enumerate(golden["fpn_features"]):
        torch.testing.assert_close(seen["backbone"][level].cpu(), expected, atol=2e-3, rtol=0)
    for name, ours in zip(("box_cls", "box_regression", "centerness"), seen["head"]):
        for level, expected in enumerate(golden[name]):
            torch.testing.assert_close(ours[level].cpu(), expected, atol=1e-4, rtol=0,
                                       msg=lambda m: f"{name} level {level}: {m}")
    for expected in golden["anchors"]:  # one list of levels, shared by the images
        assert [torch.equal(a.cpu(), e) for a, e in zip(seen["anchors"], expected)] == [True] * 5
    for result, expected, (h, w) in zip(detections, golden["detections"], golden["image_sizes_hw"].tolist()):
        assert result.size == (w, h) and result.mode == "xyxy"
        assert_same_detections(result, expected, box_atol=0.05, score_atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_forward_matches_golden(model_on, device):
    check_eval_against_golden(model_on(device), device)


@pytest.mark.parametrize("device", DEVICES)
def test_prepared_for_inference_matches_golden(cpu_model, device):
    model = copy.deepcopy(cpu_model).to(device).prepare_for_inference()
    assert not any("running_mean" in key for key in model.state_dict())  # FrozenBN folded away
    check_eval_against_golden(model, device)
    model.train()
    with pytest.raises(RuntimeError, match="prepare_for_inference"):
        model(torch.zeros(3, 64, 64), [BoxList(torch.zeros(0, 4), (64, 64))])


# ----------------------------------------------------------------------------- fixture 3

def golden_targets(golden, device):
    targets = []
    for target in golden["targets"]:
        boxlist = BoxList(target["bbox"].to(device), tuple(int(v) for v in target["size_wh"]), mode="xyxy")
        boxlist.add_field("labels", target["labels"].to(device))
        targets.append(boxlist)
    return targets


@pytest.mark.parametrize("device", DEVICES)
def test_train_losses_targets_and_grads_match_golden(model_on, device):
    model = model_on(device).train()
    golden, expected = load_golden("model_train_R50.pt"), load_golden("model_train_R50.json")
    images = golden_images(load_golden("model_eval_R50.pt"), device)
    targets = golden_targets(golden, device)
    try:
        with Recorder(anchors=model.rpn.anchor_generator) as seen:
            losses = model(images, targets)
        assert set(losses) == {"loss_cls", "loss_reg", "loss_centerness"}
        for name, value in expected["losses"].items():
            assert losses[name].dim() == 0
            assert math.isclose(losses[name].item(), value, rel_tol=1e-4), (name, losses[name].item(), value)
        sum(losses.values()).backward()
    finally:
        model.eval()

    with torch.no_grad():
        labels, reg_targets = model.rpn.loss_evaluator.prepare_targets(targets, seen["anchors"])
    for ours, ours_reg, want, want_reg in zip(labels, reg_targets, golden["labels_per_anchor"],
                                              golden["reg_targets_per_anchor"]):
        assert torch.equal(ours.cpu(), want)
        positive = want > 0
        torch.testing.assert_close(ours_reg.cpu()[positive], want_reg[positive], atol=1e-4, rtol=1e-5)
    assert [int((label > 0).sum()) for label in labels] == expected["num_pos_per_image"]

    parameters = dict(model.named_parameters())
    for name, stats in expected["grads"].items():
        grad = parameters[name].grad
        if not stats["requires_grad"]:
            assert grad is None and not parameters[name].requires_grad, name
            continue
        grad = grad.double().cpu().flatten()
        assert math.isclose(grad.norm().item(), stats["l2"], rel_tol=1e-3), (name, grad.norm().item(), stats["l2"])
        torch.testing.assert_close(grad[:8], torch.tensor(stats["first8"], dtype=torch.float64),
                                   atol=1e-3 * stats["absmax"], rtol=1e-3, msg=lambda m: f"{name}: {m}")
    # no positives on P7, so its Scale gets exactly zero gradient
    assert parameters["rpn.head.scales.4.scale"].grad.item() == 0.0
    assert parameters["backbone.body.stem.conv1.weight"].grad is None


def test_channels_last_config_keeps_golden_losses():
    """MODEL.CHANNELS_LAST only changes memory order: the golden losses still hold."""
    model = filled_r50("MODEL.CHANNELS_LAST", "True").train()
    conv = model.backbone.body.layer1[0].conv2.weight  # 3x3: NCHW and NHWC strides differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    golden, expected = load_golden("model_train_R50.pt"), load_golden("model_train_R50.json")
    losses = model(golden_images(load_golden("model_eval_R50.pt"), "cpu"), golden_targets(golden, "cpu"))
    for name, value in expected["losses"].items():
        assert math.isclose(losses[name].item(), value, rel_tol=1e-4), (name, losses[name].item(), value)


# ----------------------------------------------------------------------------- input handling

def synthetic_images(sizes_hw, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=generator) * 255 - 115 for h, w in sizes_hw]


@pytest.mark.parametrize("divisibility", [0, 32, 128])
def test_unequal_image_sizes_and_size_divisibility(cpu_model, divisibility):
    model = copy.deepcopy(cpu_model)
    model.size_divisibility = divisibility
    sizes = [(70, 101), (90, 64)]
    images = synthetic_images(sizes)
    with Recorder(backbone=model.backbone) as seen, torch.no_grad():
        batched = model(images)
    padded_h, padded_w = (max(s) for s in zip(*sizes))
    if divisibility:
        padded_h, padded_w = (math.ceil(v / divisibility) * divisibility for v in (padded_h, padded_w))
    batch = seen["backbone_inputs"][0]
    assert batch.shape == (2, 3, padded_h, padded_w)
    for index, (image, (h, w), result) in enumerate(zip(images, sizes, batched)):
        assert torch.equal(batch[index, :, :h, :w], image) and batch[index, :, h:].abs().sum() == 0
        assert result.size == (w, h)
        assert (result.bbox >= 0).all() and (result.bbox[:, 2] <= w - 1).all() and (result.bbox[:, 3] <= h - 1).all()
        # the same image alone on the same padded canvas gives the same detections: nothing leaks
        # between images of a batch and each is clipped to its own size
        alone = ImageList(batch[index:index + 1].clone(), [(h, w)])
        with torch.no_grad():
            single, = model(alone)
        assert len(single) > 0
        assert_same_detections(single, {"bbox": result.bbox, "scores": result.get_field("scores"),
                                        "labels": result.get_field("labels")}, box_atol=1e-3, score_atol=1e-5)


def test_size_divisibility_comes_from_config_and_tensor_inputs_are_accepted(cpu_model):
    model = filled_r50("DATALOADER.SIZE_DIVISIBILITY", 64).eval()
    assert model.size_divisibility == 64
    image, = synthetic_images([(64, 128)])
    with torch.no_grad():
        from_tensor, = model(image)  # (3, H, W) tensor
        from_batch, = model(image[None])  # (N, 3, H, W) tensor
        from_list, = model([image])
    for other in (from_batch, from_list):
        assert torch.equal(other.bbox, from_tensor.bbox)
    assert len(from_tensor) > 0 and from_tensor.size == (128, 64)


def test_training_needs_targets(cpu_model):
    model = copy.deepcopy(cpu_model).train()
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="one BoxList per image"):
        model([torch.zeros(3, 64, 64)] * 2, [BoxList(torch.zeros(0, 4), (64, 64))])


def _boxlist_with_labels(labels):
    target = BoxList(torch.tensor([[10.0, 12.0, 40.0, 50.0]] * len(labels)), (64, 64))
    target.add_field("labels", torch.tensor(labels))
    return target


def test_dict_targets_and_labels_outside_the_classes_are_refused(cpu_model):
    """torchvision-style dict targets get a TypeError naming BoxList; labels outside
    1..NUM_CLASSES-1 (81 classes with the background: 1..80) one ValueError, before any work."""
    model = copy.deepcopy(cpu_model).train()
    image = torch.zeros(3, 64, 64)
    as_dict = {"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
    with pytest.raises(TypeError, match="target 0 is dict; targets must be BoxLists .* 'labels' field"):
        model([image], [as_dict])
    with pytest.raises(TypeError, match="target 0 is a BoxList without 'labels'"):
        model([image], [BoxList(torch.zeros(0, 4), (64, 64))])
    for bad in (81, 0, -1):
        with pytest.raises(ValueError, match=f"target 1 has label {bad}; labels must be class ids 1..80"):
            model([image, image], [_boxlist_with_labels([1]), _boxlist_with_labels([80, bad])])
    assert set(model([image], [_boxlist_with_labels([80])])) == {"loss_cls", "loss_reg", "loss_centerness"}


def test_image_without_gt_trains_with_finite_losses(cpu_model):
    model = copy.deepcopy(cpu_model).train()
    sizes = [(96, 128), (80, 112)]
    with_gt = BoxList(torch.tensor([[10.0, 12.0, 70.0, 60.0], [40.0, 5.0, 100.0, 90.0]]), (128, 96))
    with_gt.add_field("labels", torch.tensor([3, 17]))
    empty = BoxList(torch.zeros(0, 4), (112, 80))
    empty.add_field("labels", torch.zeros(0, dtype=torch.int64))
    losses = model(synthetic_images(sizes), [with_gt, empty])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_reg"] > 0
    sum(losses.values()).backward()
    grad = model.rpn.head.cls_logits.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    # both images empty: no positives anywhere, finite losses and a classification gradient
    model.zero_grad(set_to_none=True)
    empty_first = BoxList(torch.zeros(0, 4), (128, 96))
    empty_first.add_field("labels", torch.zeros(0, dtype=torch.int64))
    losses = model(synthetic_images(sizes), [empty_first, empty])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_cls"] > 0
    assert losses["loss_reg"] == 0 and losses["loss_centerness"] == 0
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0
