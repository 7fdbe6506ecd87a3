"""ONNX and TorchScript export (atss_core/export.py, tools/export_model.py).

Oracle: the PyTorch model itself, ``model([image])`` in eval mode, on the golden data's images
(BGR-255 minus PIXEL_MEAN, as both models expect), with the golden weight fill so that there are
hundreds of candidates per image and the per-image cap of 100 is reached. One exported file of
each format serves images of several sizes, some not multiples of SIZE_DIVISIBILITY.
"""
import copy
import os
import re
import shlex
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from atss_core.config import cfg as default_cfg
from atss_core.export import ExportableATSS, export_onnx, export_torchscript
from atss_core.modeling.detector import build_detection_model
from conftest import REPO_ROOT, load_golden, weightfill

sys.path.insert(0, str(REPO_ROOT / "tools"))
import export_model  # noqa: E402

onnxruntime = pytest.importorskip("onnxruntime")

QUICKSTART_CONFIG = REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml"
R50_CONFIG = REPO_ROOT / "configs" / "atss" / "atss_R_50_FPN_1x.yaml"
DCN_CONFIG = REPO_ROOT / "configs" / "atss" / "atss_dcnv2_R_50_FPN_1x.yaml"


def build_filled(config_file):
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", "cpu"])
    model = build_detection_model(cfg)
    model.load_state_dict(weightfill().fill_state_dict(model.state_dict()), strict=True)
    return model.eval()


def golden_test_images():
    """Four (3, H, W) images of four sizes: the two golden ones and two crops of them."""
    golden = load_golden("model_eval_R50.pt")
    images = [image[:, :h, :w] for image, (h, w) in zip(golden["batched_images"], golden["image_sizes_hw"].tolist())]
    return images + [images[0][:, 32:288, 64:256], images[1][:, :224, 40:360]]


def load_onnx(path):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda image: [torch.from_numpy(out) for out in session.run(None, {"image": image[None].numpy()})]


def load_torchscript(path):
    module = torch.jit.load(str(path))
    return lambda image: module(image[None])


LOADERS = {"onnx": load_onnx, "torchscript": load_torchscript}


def pytorch_detections(model, images):
    """What the oracle gives: ``model([image])[0]`` for each image."""
    with torch.no_grad():
        return [model([image])[0] for image in images]


def assert_same_as_pytorch(expected, outputs):
    boxes, scores, labels = outputs
    assert labels.dtype == torch.int64 and boxes.dtype == scores.dtype == torch.float32
    assert len(boxes) == len(expected), f"{len(boxes)} detections, PyTorch gives {len(expected)}"
    assert torch.equal(labels, expected.get_field("labels"))
    torch.testing.assert_close(boxes, expected.bbox, atol=1e-2, rtol=0)
    torch.testing.assert_close(scores, expected.get_field("scores"), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quick-start model (golden fill), its weights file, both exports made by the tool and the
    PyTorch detections on ``golden_test_images()``."""
    tmp_dir = tmp_path_factory.mktemp("export_quickstart")
    model = build_filled(QUICKSTART_CONFIG)
    weights = tmp_dir / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    files = {}
    for fmt in LOADERS:
        files[fmt] = tmp_dir / f"model.{fmt}"
        export_model.main(["--config-file", str(QUICKSTART_CONFIG), "--weights", str(weights),
                           "--format", fmt, "--output", str(files[fmt])])
    return model, weights, files, pytorch_detections(model, golden_test_images())


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """Both exports of R-50-FPN's inference fast path (golden fill) and the plain model's detections
    on the first three ``golden_test_images()``."""
    tmp_dir = tmp_path_factory.mktemp("export_r50")
    model = build_filled(R50_CONFIG)
    fast = copy.deepcopy(model).prepare_for_inference(channels_last=False)
    example = golden_test_images()[0][None]
    files = {"onnx": tmp_dir / "r50.onnx", "torchscript": tmp_dir / "r50.pt"}
    export_onnx(fast, example, files["onnx"])
    export_torchscript(fast, example, files["torchscript"])
    return files, pytorch_detections(model, golden_test_images()[:3])


@pytest.mark.parametrize("fmt", list(LOADERS))
def test_quickstart_export_matches_pytorch(quickstart, fmt):
    _, _, files, expected = quickstart
    run, counts = LOADERS[fmt](files[fmt]), []
    for image, detections in zip(golden_test_images(), expected):
        outputs = run(image)
        assert_same_as_pytorch(detections, outputs)
        counts.append(len(outputs[0]))
    assert max(counts) == 100, f"the per-image cap was never reached: {counts}"


@pytest.mark.parametrize("fmt", list(LOADERS))
def test_r50_export_matches_pytorch(r50, fmt):
    files, expected = r50
    run, counts = LOADERS[fmt](files[fmt]), []
    for image, detections in zip(golden_test_images(), expected):
        outputs = run(image)
        assert_same_as_pytorch(detections, outputs)
        counts.append(len(outputs[0]))
    assert min(counts) > 0 and max(counts) == 100, counts


def test_eager_exportable_reproduces_ties_of_the_postprocessor():
    """Quantised logits make many scores exactly equal, so the pre-NMS cut, NMS and the cap all
    meet ties; the tensor-only path must resolve them as ATSSPostProcessor does."""
    model = build_filled(QUICKSTART_CONFIG)
    exportable = ExportableATSS(model).eval()
    postprocessor = model.rpn.box_selector_test
    postprocessor.pre_nms_top_n, exportable.pre_nms_top_n = 30, 30
    image = golden_test_images()[1]
    with torch.no_grad():
        features = model.backbone(torch.nn.functional.pad(image, (0, 5, 0, 3))[None])
        box_cls, box_regression, centerness = model.rpn.head(features)
        box_cls = [(logits * 2).round() / 2 for logits in box_cls]  # steps of 0.5: many ties
        centerness = [torch.zeros_like(logits) for logits in centerness]
        anchors = model.rpn.anchor_generator.grid_anchors([f.shape[-2:] for f in features])
        height, width = image.shape[-2:]
        boxes, scores, labels = exportable.detect(box_cls, box_regression, centerness, anchors, height, width)
        expected = postprocessor(box_cls, box_regression, centerness, anchors, [(height, width)])[0]
    assert len(torch.unique(scores)) < len(scores) / 4, "the case should be full of ties"
    assert torch.equal(labels, expected.get_field("labels"))
    assert torch.equal(boxes, expected.bbox) and torch.equal(scores, expected.get_field("scores"))


def run_alone(tmp_path, image, imports, run, isolation_check):
    """Runs an exported file on ``image`` in a fresh interpreter that imports ``imports`` only;
    ``run`` is the expression that gives the outputs from the array ``image``, and
    ``isolation_check`` a statement that fails if a forbidden module got imported. Returns the
    outputs, with the dtypes the runtime gave them."""
    np.save(tmp_path / "image.npy", image[None].numpy())
    script = (
        f"import sys, numpy, {imports}\n"
        f"image = numpy.load({str(tmp_path / 'image.npy')!r})\n"
        f"outputs = {run}\n"
        f"{isolation_check}\n"
        f"numpy.savez({str(tmp_path / 'out.npz')!r}, *[numpy.asarray(o) for o in outputs])\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    saved = np.load(tmp_path / "out.npz")
    return [torch.from_numpy(saved[f"arr_{i}"]) for i in range(len(saved.files))]


def test_torchscript_runs_without_atss_core(quickstart, tmp_path):
    """torch.jit.load with only torch and torchvision imported (in a fresh interpreter)."""
    _, _, files, expected = quickstart
    outputs = run_alone(
        tmp_path, golden_test_images()[0], "torch, torchvision",
        f"[o.numpy() for o in torch.jit.load({str(files['torchscript'])!r})(torch.from_numpy(image))]",
        "assert not any(name.startswith('atss_core') for name in sys.modules)")
    assert_same_as_pytorch(expected[0], outputs)


def test_onnx_runs_in_onnxruntime_alone(quickstart, tmp_path):
    """The ONNX file needs onnxruntime only: no torch in the interpreter that runs it."""
    _, _, files, expected = quickstart
    outputs = run_alone(
        tmp_path, golden_test_images()[1], "onnxruntime",
        f"onnxruntime.InferenceSession({str(files['onnx'])!r}, providers=['CPUExecutionProvider'])"
        ".run(None, {'image': image})",
        "assert 'torch' not in sys.modules")
    assert_same_as_pytorch(expected[1], outputs)


def run_tool(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "export_model.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


def test_tool_rejects_dcn_config_in_one_line(tmp_path):
    result = run_tool("--config-file", DCN_CONFIG, "--weights", tmp_path / "dcn.pth", "--format", "onnx",
                      "--output", tmp_path / "dcn.onnx", "MODEL.DEVICE", "cpu")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "deformable" in message and "ONNX" in message and "TorchScript" in message


def test_tool_missing_weights_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"export_model: error: .*none\.pth") as exit_info:
        export_model.main(["--config-file", str(QUICKSTART_CONFIG), "--weights", str(tmp_path / "none.pth"),
                           "--format", "torchscript", "--output", str(tmp_path / "m.pt")])
    assert "\n" not in str(exit_info.value)


def test_tool_names_missing_onnx_packages(monkeypatch, quickstart, tmp_path):
    real_find_spec = export_model.importlib.util.find_spec
    monkeypatch.setattr(export_model.importlib.util, "find_spec",
                        lambda name: None if name == "onnxruntime" else real_find_spec(name))
    with pytest.raises(SystemExit, match="ONNX export needs onnxruntime: pip install onnxruntime"):
        export_model.main(["--config-file", str(QUICKSTART_CONFIG), "--weights", str(quickstart[1]),
                           "--format", "onnx", "--output", str(tmp_path / "m.onnx")])


def readme_blocks(section):
    """(language, code) of each fenced block in the README section titled ``section``."""
    text = (REPO_ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)


def test_readme_export_examples_run_as_written(quickstart, tmp_path):
    """Every block of "Export and deployment", run from a folder laid out like the checkout after
    the quick-start training (weights at output/quickstart/model_final.pth), on a photo.jpg."""
    weights = quickstart[1]
    for name in ("tools", "configs"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    (tmp_path / "output" / "quickstart").mkdir(parents=True)
    shutil.copy(weights, tmp_path / "output" / "quickstart" / "model_final.pth")
    photo = np.full((240, 360, 3), 200, np.uint8)
    photo[60:180, 90:210] = (30, 160, 40)  # a green square on grey
    cv2.imwrite(str(tmp_path / "photo.jpg"), photo)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    blocks = readme_blocks("Export and deployment")
    assert [language for language, _ in blocks] == ["python", "bash", "python"]
    for language, code in blocks:
        if language == "bash":
            command = code.replace(".venv/bin/python", shlex.quote(sys.executable))
            result = subprocess.run(["bash", "-ec", command], cwd=tmp_path, env=environment, capture_output=True,
                                    text=True, timeout=900)
        else:
            result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment,
                                    capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{language} block failed:\n{code}\n{result.stderr[-2000:]}"
    assert (tmp_path / "atss_quickstart.onnx").is_file() and (tmp_path / "atss_quickstart.pt").is_file()
    assert result.stdout.count("\n") > 0, "the onnxruntime example found nothing to print"
