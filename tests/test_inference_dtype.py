"""TEST.DTYPE: the network runs in bfloat16 / float16 under autocast, post-processing in float32.

Oracles: the float32 run of the same model, and the unit roundoff of each type (bfloat16 keeps 8
significant bits, u = 2**-9 ~ 0.002; float16 11 bits, u = 2**-12 ~ 0.00024).
"""
import copy
import logging
from types import SimpleNamespace

import pytest
import torch

from atss_core.config import cfg as default_cfg
from atss_core.engine.inference import compute_on_dataset
from atss_core.engine.precision import inference_autocast
from atss_core.predictor import Predictor
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import ImageList
from conftest import DEVICES, load_golden
from test_demo import LANDSCAPE_BOX, LANDSCAPE_HW, SCORES, labels_and_scores, noise_image, tiny_model  # noqa: F401
from test_head_postprocess import ieee_fp32_convs  # noqa: F401 (autouse: float32 reference without TF32)
from test_model_golden import filled_r50

from demo.predictor import COCODemo

# Relative L2 error of the head's maps against float32 on the golden R-50 fill, with about 2.5x
# headroom over what was measured (bfloat16: cls 0.004, regression 0.026, centerness 0.031;
# float16: 0.0005 / 0.003 / 0.0044): about 40 roundoffs of the type, from roughly 60 layers.
HEAD_TOLERANCE = {"bfloat16": 0.08, "float16": 0.012}


def autocast_state(device_type="cpu"):
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


@pytest.mark.parametrize("value, expected", [
    ("float32", False), (torch.float32, False), ("bfloat16", torch.bfloat16), ("float16", torch.float16),
    (torch.bfloat16, torch.bfloat16)])
def test_inference_autocast_follows_the_dtype(value, expected):
    with inference_autocast(value, "cpu"):
        enabled, dtype = autocast_state()
    assert enabled == (expected is not False)
    if expected is not False:
        assert dtype == expected


def test_inference_autocast_reads_test_dtype_and_rejects_unknown_values():
    cfg = default_cfg.clone()
    assert cfg.TEST.DTYPE == "float32"
    cfg.TEST.DTYPE = "bfloat16"
    with inference_autocast(cfg, torch.device("cpu")):
        assert autocast_state() == (True, torch.bfloat16)
    cfg.TEST.DTYPE = "fp8"
    with pytest.raises(ValueError, match="TEST.DTYPE must be one of float32, bfloat16, float16, got 'fp8'"):
        inference_autocast(cfg, "cpu")


@pytest.fixture(scope="module")
def prepared_r50_and_image():
    model = filled_r50().prepare_for_inference()
    golden = load_golden("model_eval_R50.pt")
    height, width = golden["image_sizes_hw"][0].tolist()
    return model, ImageList(golden["batched_images"][:1], [(height, width)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_network_runs_in_dtype_and_postprocessing_in_float32(prepared_r50_and_image, dtype, device):
    model, images = prepared_r50_and_image
    if device != "cpu":
        model, images = copy.deepcopy(model).to(device), images.to(device)
    seen = {}
    head_hook = model.rpn.head.register_forward_hook(lambda m, i, out: seen.__setitem__("head", out))
    post_hook = model.rpn.box_selector_test.register_forward_pre_hook(
        lambda m, args: seen.__setitem__("post", (args, autocast_state(images.tensors.device.type)[0])))
    try:
        with torch.inference_mode():
            reference = model(images)[0]
            reference_head = seen["head"]
            with inference_autocast(dtype, device):
                detections = model(images)[0]
    finally:
        head_hook.remove()
        post_hook.remove()

    box_cls, box_regression, centerness = seen["head"]
    assert box_cls[0].dtype == getattr(torch, dtype)  # the network did run in the low precision
    post_args, post_under_autocast = seen["post"]
    assert not post_under_autocast
    assert all(level.dtype == torch.float32 for maps in post_args[:3] for level in maps)
    assert detections.bbox.dtype == torch.float32 and detections.get_field("scores").dtype == torch.float32
    assert len(detections) == len(reference)

    for name, maps, reference_maps in zip(("cls", "regression", "centerness"), seen["head"], reference_head):
        for level, (low, high) in enumerate(zip(maps, reference_maps)):
            error = ((low.float() - high).norm() / high.norm()).item()
            assert 0 < error < HEAD_TOLERANCE[dtype], f"{name} level {level}: relative error {error:.4f}"


def test_predictor_warns_when_test_dtype_is_slow_on_this_cpu(tiny_model, caplog, monkeypatch):  # noqa: F811
    from atss_core.engine import precision
    config_file, weights, _ = tiny_model
    for has_bfloat16 in (True, False):
        monkeypatch.setattr(precision, "onednn_has_bfloat16", lambda: has_bfloat16)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            Predictor(config_file, weights, opts=["MODEL.DEVICE", "cpu", "TEST.DTYPE", "bfloat16"])
        assert ("TEST.DTYPE bfloat16: this CPU has no native bfloat16" in caplog.text) == (not has_bfloat16)


def test_demo_runs_the_network_in_test_dtype(tiny_model):  # noqa: F811
    _, _, cfg = tiny_model
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.DTYPE = "bfloat16"
    demo = COCODemo(cfg)
    head_dtypes = []
    demo.model.rpn.head.register_forward_hook(lambda m, i, out: head_dtypes.append(out[0][0].dtype))

    predictions = demo.compute_prediction(noise_image(*LANDSCAPE_HW))
    assert head_dtypes == [torch.bfloat16]
    labels, scores = labels_and_scores(predictions)
    assert sorted(labels) == [1, 2, 3, 4]
    # Scores come from sigmoids of logits near +-1 that bfloat16 rounds by up to ~0.004.
    assert [dict(zip(labels, scores))[k] for k in (1, 2, 3, 4)] == pytest.approx(SCORES, abs=0.01)
    for box in predictions.bbox:
        assert box.tolist() == pytest.approx(LANDSCAPE_BOX, abs=2)


def test_compute_on_dataset_runs_the_model_in_the_given_dtype():
    seen = []

    def model(images):
        seen.append(autocast_state())
        return [BoxList(torch.zeros(0, 4), (8, 8))]
    model.eval = lambda: None
    loader = [(ImageList(torch.zeros(1, 3, 8, 8), [(8, 8)]), None, [0])]
    compute_on_dataset(model, loader, "cpu", dtype="bfloat16")
    compute_on_dataset(model, loader, "cpu")
    assert seen == [(True, torch.bfloat16), (False, seen[1][1])]


def test_unknown_test_dtype_is_one_line_in_test_net_and_the_demo(tmp_path, tiny_model):  # noqa: F811
    from atss_core.engine.launch import load_config
    config_file = tmp_path / "c.yaml"
    config_file.write_text("MODEL:\n  ATSS_ON: True\n")
    expected = "TEST.DTYPE must be one of float32, bfloat16, float16, got 'half'"
    with pytest.raises(SystemExit) as exit_info:
        load_config(default_cfg.clone(), str(config_file), ["TEST.DTYPE", "half"])
    assert str(exit_info.value.code) == f"error: {expected}"
    _, _, cfg = tiny_model
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.DTYPE = "half"
    with pytest.raises(ValueError, match=expected):
        COCODemo(cfg)


def test_run_test_passes_test_dtype_to_inference(monkeypatch):
    from atss_core.engine import launch
    calls = []
    monkeypatch.setattr(launch, "make_data_loader", lambda cfg, is_train, is_distributed: ["loader"])
    monkeypatch.setattr(launch, "inference", lambda model, loader, **kwargs: calls.append(kwargs["dtype"]))
    cfg = default_cfg.clone()
    cfg.merge_from_list(["DATASETS.TEST", ("set",), "OUTPUT_DIR", "", "TEST.DTYPE", "float16"])
    launch.run_test(cfg, SimpleNamespace(prepare_for_inference=lambda: None), distributed=False)
    assert calls == ["float16"]
