"""Demo tests: demo/predictor.py (COCODemo) and the demo/atss_demo.py command line.

Oracle: a small model whose head is set by hand so that its detections are known in advance.
The last classification-tower norm outputs the constant 1 at every location, and every
``cls_logits`` weight is -3 / channels, so a location's logit is its bias minus 3 per 3x3 tap
that falls inside the zero-padded feature map. Only the single P7 location (padded input of
at most 128 x 128) has one tap; every other location has at least four and falls far below
INFERENCE_TH. Centerness is pinned at sigmoid(30) = 1, so the reported scores are ``SCORES``
(one per class), and ``bbox_pred`` decodes the P7 anchor (centre 64, 64) into a square of side
``BOX_SIDE`` in the resized image. The backbone's random weights then play no part.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from atss_core.config import cfg as default_cfg
from atss_core.modeling.detector import build_detection_model
from atss_core.structures.bounding_box import BoxList
from conftest import DEVICES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "demo"
sys.path.insert(0, str(DEMO_DIR))  # the demo scripts import each other as top-level modules

import atss_demo  # noqa: E402
from predictor import COCODemo, class_colors, load_coco_thresholds  # noqa: E402

QUICKSTART_CONFIG = REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml"
CATEGORIES = [{"id": 3, "name": "apple"}, {"id": 7, "name": "kiwi"}, {"id": 8, "name": "plum"},
              {"id": 11, "name": "fig"}]
SCORES = (0.9, 0.7, 0.45, 0.3)  # reported score of labels 1..4
BOX_SIDE = 49                   # pixels, in the resized (128 x 96) image
P7_ANCHOR_SIDE = 512            # quick-start ANCHOR_SIZES at stride 128
# Input 256 x 192 is resized by 1/2 to 128 x 96: the box [40, 40, 88, 88] doubles.
LANDSCAPE_HW, LANDSCAPE_BOX = (192, 256), (80, 80, 176, 176)
# Input 288 x 384 (portrait) is resized by 1/3 to 96 x 128: the box triples.
PORTRAIT_HW, PORTRAIT_BOX = (384, 288), (120, 120, 264, 264)


def tiny_config(tmp_dir, num_classes=5):
    """The quick-start model made small, tested at 96..128 px, its classes named in a tiny json."""
    ann_file = tmp_dir / "instances.json"
    ann_file.write_text(json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))
    dataset = f"coco:{tmp_dir}:{ann_file}" if num_classes == 5 else "coco_2017_val"
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(QUICKSTART_CONFIG))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CONVS", 1,
        "MODEL.ATSS.NUM_CLASSES", num_classes, "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
        "DATASETS.TRAIN", (dataset,), "DATASETS.TEST", (dataset,), "OUTPUT_DIR", str(tmp_dir / "train"),
    ])
    return cfg


def set_known_detections(model):
    """Set the head so the model finds one box, with score ``SCORES[k - 1]`` for each label k."""
    head = model.rpn.head
    with torch.no_grad():
        last_norm = head.cls_tower[-2]
        last_norm.weight.zero_()
        last_norm.bias.fill_(1.0)
        head.cls_logits.weight.fill_(-3.0 / head.cls_logits.in_channels)
        head.cls_logits.bias.copy_(torch.logit(torch.tensor(SCORES, dtype=torch.float64) ** 2) + 3.0)
        head.centerness.weight.zero_()
        head.centerness.bias.fill_(30.0)
        head.bbox_pred.weight.zero_()
        log_scale = 5.0 * math.log(BOX_SIDE / P7_ANCHOR_SIDE)  # BoxCoder weights (10, 10, 5, 5)
        head.bbox_pred.bias.copy_(torch.tensor([0.0, 0.0, log_scale, log_scale]))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """(config file, weights file, frozen config) of the hand-set model."""
    tmp_dir = tmp_path_factory.mktemp("tiny_model")
    cfg = tiny_config(tmp_dir)
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    set_known_detections(model)
    weights = tmp_dir / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 1}, weights)
    config_file = tmp_dir / "tiny.yaml"
    config_file.write_text(cfg.dump())
    cfg.MODEL.WEIGHT = str(weights)
    cfg.freeze()
    return config_file, weights, cfg


def noise_image(height, width, seed=0):
    """Mid-range noise (40..215 per channel): no palette colour (one channel at 240) can match it."""
    return np.random.default_rng(seed).integers(40, 216, size=(height, width, 3), dtype=np.uint8)


def assert_box_drawn(original, annotated, box, margin=4):
    """Every pixel of the outline of ``box`` changed; the inside and the far surroundings did not.

    The label tag sits above the top-left corner, so the strip above the box is left out.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    changed = np.any(original != annotated, axis=2)
    outline = (changed[y1, x1:x2 + 1], changed[y2, x1:x2 + 1], changed[y1:y2 + 1, x1], changed[y1:y2 + 1, x2])
    for edge in outline:
        assert edge.all(), f"box {box}: outline pixels left unchanged"
    assert changed[y1 - 8:y1, x1:x1 + 20].any(), "no label tag above the box"
    assert not changed[y1 + margin:y2 - margin + 1, x1 + margin:x2 - margin + 1].any(), "box inside changed"
    assert not changed[y2 + margin:].any(), "changes below the box"
    assert not changed[y1:, x2 + margin:].any(), "changes right of the box"
    assert not changed[:, :x1 - margin].any(), "changes left of the box"
    assert not changed[:y1 - 30].any(), "changes far above the box"


def labels_and_scores(predictions):
    return predictions.get_field("labels").tolist(), predictions.get_field("scores").tolist()


def run_demo_script(*args, cwd=REPO_ROOT):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(DEMO_DIR / "atss_demo.py"), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- COCODemo

@pytest.mark.parametrize("device", DEVICES)
def test_predictor_detects_and_draws_the_known_box(tiny_model, device):
    _, _, cfg = tiny_model
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    demo = COCODemo(cfg)  # non-COCO model: one threshold, 0.5
    assert demo.class_names == ("__background", "apple", "kiwi", "plum", "fig")

    image = noise_image(*LANDSCAPE_HW)
    predictions = demo.compute_prediction(image)
    assert predictions.size == (LANDSCAPE_HW[1], LANDSCAPE_HW[0])
    labels, scores = labels_and_scores(predictions)
    assert sorted(labels) == [1, 2, 3, 4]
    by_label = dict(zip(labels, scores))
    assert [by_label[k] for k in (1, 2, 3, 4)] == pytest.approx(SCORES, abs=1e-4)
    for box in predictions.bbox:
        assert box.tolist() == pytest.approx(LANDSCAPE_BOX, abs=2)

    top = demo.select_top_predictions(predictions)
    assert labels_and_scores(top)[0] == [1, 2]  # 0.9 and 0.7 pass 0.5; 0.45 and 0.3 do not

    annotated = demo.run_on_opencv_image(image)
    assert annotated.shape == image.shape and annotated.dtype == np.uint8
    for box in top.bbox:
        assert_box_drawn(image, annotated, box.tolist())
    assert np.array_equal(image, noise_image(*LANDSCAPE_HW)), "the input image was modified"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height, width", [(5000, 1), (1, 5000), (2, 3000)])
def test_extreme_aspect_ratios_run_through_the_model(tiny_model, height, width, device):
    """The test-time resize would make a 0 px side; the model runs on a 1 px wide input instead
    and the detections come back in the input's size."""
    _, _, cfg = tiny_model
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    demo = COCODemo(cfg)
    predictions = demo.compute_prediction(noise_image(height, width))
    assert predictions.size == (width, height)
    assert torch.isfinite(predictions.bbox).all()
    annotated = demo.run_on_opencv_image(noise_image(height, width))
    assert annotated.shape == (height, width, 3)


def test_per_class_thresholds_and_single_threshold(tiny_model):
    _, _, cfg = tiny_model
    image = noise_image(*LANDSCAPE_HW)
    per_class = COCODemo(cfg, confidence_thresholds_for_classes=[0.95, 0.6, 0.5, 0.2])
    labels, scores = labels_and_scores(per_class.select_top_predictions(per_class.compute_prediction(image)))
    assert labels == [2, 4]  # 0.9 < 0.95 and 0.45 < 0.5 drop; best first
    assert scores == pytest.approx([0.7, 0.3], abs=1e-4)

    single = COCODemo(cfg, confidence_thresholds_for_classes=[0.95, 0.6, 0.5, 0.2], confidence_threshold=0.4)
    assert labels_and_scores(single.select_top_predictions(single.compute_prediction(image)))[0] == [1, 2, 3]

    with pytest.raises(ValueError, match="4 classes"):
        COCODemo(cfg, confidence_thresholds_for_classes=[0.5, 0.5])


def test_coco_model_uses_tuned_thresholds_and_coco_names(tmp_path):
    cfg = tiny_config(tmp_path, num_classes=81)
    weights = tmp_path / "coco_model.pth"  # untrained: the head is irrelevant here
    torch.save({"model": build_detection_model(cfg).state_dict()}, weights)
    cfg.MODEL.WEIGHT = str(weights)
    demo = COCODemo(cfg)
    assert len(demo.class_names) == 81
    assert (demo.class_names[1], demo.class_names[11], demo.class_names[80]) == (
        "person", "fire hydrant", "toothbrush")
    thresholds = load_coco_thresholds()
    assert len(thresholds) == 80 and thresholds[0] == pytest.approx(0.4923645853996277)

    # Tuned thresholds (typed from the original demo): person 0.4924, fire hydrant 0.6090,
    # stop sign 0.6661, bench 0.4062.
    predictions = BoxList(torch.tensor([[0, 0, 9, 9]] * 4, dtype=torch.float32), (20, 20))
    predictions.add_field("labels", torch.tensor([1, 11, 12, 15]))
    predictions.add_field("scores", torch.tensor([0.495, 0.60, 0.65, 0.41]))
    assert labels_and_scores(demo.select_top_predictions(predictions))[0] == [1, 15]
    demo_single = COCODemo(cfg, confidence_threshold=0.3)
    assert labels_and_scores(demo_single.select_top_predictions(predictions))[0] == [12, 11, 1, 15]


def test_class_colors_are_distinct():
    colors = class_colors(81)
    assert colors.shape == (81, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors.tolist()}) == 81
    assert (colors.max(axis=1) >= 230).all()  # bright: stands out from mid-tone image content


# --------------------------------------------------------------------------- command line

def test_demo_script_annotates_a_folder_and_reports_unreadable_images(tiny_model, tmp_path):
    config_file, weights, _ = tiny_model
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    inputs = {"a.png": (noise_image(*LANDSCAPE_HW, seed=1), LANDSCAPE_BOX),
              "b.png": (noise_image(*PORTRAIT_HW, seed=2), PORTRAIT_BOX)}
    for name, (image, _) in inputs.items():
        assert cv2.imwrite(str(images_dir / name), image)
    (images_dir / "broken.jpg").write_bytes(b"not an image")
    (images_dir / "notes.txt").write_text("ignored: not an image name")
    output_dir = tmp_path / "out"

    run = run_demo_script("--config-file", config_file, "--weights", weights, "--images-dir", images_dir,
                          "--output-dir", output_dir, "MODEL.DEVICE", "cpu")

    assert run.returncode == 1, run.stderr  # one input could not be read
    assert "Traceback" not in run.stderr
    error_lines = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and "broken.jpg" in error_lines[0] and "cannot read image" in error_lines[0]
    timing_lines = [line for line in run.stdout.splitlines() if "inference time" in line]
    assert [line.split("\t")[0] for line in timing_lines] == ["a.png", "b.png"]
    # The hand-set box comes with labels 1 and 2 above the 0.5 threshold (scores 0.9, 0.7).
    assert [line.split("\t")[1] for line in timing_lines] == ["2 detections", "2 detections"]
    assert sorted(p.name for p in output_dir.iterdir()) == ["a.png", "b.png"]
    for name, (image, box) in inputs.items():
        annotated = cv2.imread(str(output_dir / name))
        assert annotated.shape == image.shape
        assert_box_drawn(image, annotated, box)


def test_demo_refuses_an_output_dir_that_holds_its_inputs(tiny_model, tmp_path, monkeypatch):
    """Before the model is loaded or any image read; every input keeps its bytes."""
    config_file, weights, _ = tiny_model
    images_dir = tmp_path / "photos"
    images_dir.mkdir()
    for name, seed in (("a.png", 1), ("b.jpg", 2)):
        assert cv2.imwrite(str(images_dir / name), noise_image(*LANDSCAPE_HW, seed=seed))
    original_bytes = {path.name: path.read_bytes() for path in images_dir.iterdir()}
    (tmp_path / "photos_link").symlink_to(images_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.png").symlink_to(images_dir / "a.png")  # output a.png would write through it

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(atss_demo, "COCODemo", no_model)
    cases = [(images_dir, images_dir), (images_dir, tmp_path / "photos" / ".." / "photos"),
             (images_dir, tmp_path / "photos_link"), (images_dir / "b.jpg", images_dir),
             (images_dir / "a.png", elsewhere)]
    for images, output_dir in cases:
        with pytest.raises(SystemExit, match="holds the input image .* give another --output-dir"):
            atss_demo.main(["--config-file", str(config_file), "--weights", str(weights),
                            "--images-dir", str(images), "--output-dir", str(output_dir)])
    assert {path.name: path.read_bytes() for path in images_dir.iterdir()} == original_bytes


def test_demo_skips_an_image_the_model_cannot_take(tiny_model, tmp_path, monkeypatch, capsys):
    """One line naming the image, the remaining images are still annotated, exit status 1."""
    config_file, weights, _ = tiny_model
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    assert cv2.imwrite(str(images_dir / "a_bad.png"), noise_image(*PORTRAIT_HW, seed=1))
    assert cv2.imwrite(str(images_dir / "b_good.png"), noise_image(*LANDSCAPE_HW, seed=2))
    compute_prediction = atss_demo.COCODemo.compute_prediction

    def fail_on_portrait(self, image):
        if image.shape[:2] == PORTRAIT_HW:
            raise RuntimeError("the model cannot take this\nsecond line of a long message")
        return compute_prediction(self, image)

    monkeypatch.setattr(atss_demo.COCODemo, "compute_prediction", fail_on_portrait)
    status = atss_demo.main(["--config-file", str(config_file), "--weights", str(weights),
                             "--images-dir", str(images_dir), "--output-dir", str(tmp_path / "out")])
    assert status == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"atss_demo: error: cannot annotate image {images_dir / 'a_bad.png'}: the model cannot take this"]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["b_good.png"]


def test_demo_script_missing_weights_is_one_line(tmp_path):
    run = run_demo_script("--weights", tmp_path / "nope.pth", "--images-dir", tmp_path)
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert "nope.pth" in run.stderr
    assert f"tools/train_net.py --config-file {atss_demo.QUICKSTART_CONFIG}" in run.stderr


def test_missing_weights_hints(tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as coco:
        atss_demo.main(["--config-file", str(REPO_ROOT / "configs/atss/atss_R_50_FPN_1x.yaml"),
                        "--weights", str(tmp_path / "ATSS_R_50_FPN_1x.pth")])
    message = str(coco.value)
    assert "ATSS_R_50_FPN_1x.pth" in message and "--config-file configs/atss/atss_R_50_FPN_1x.yaml" in message

    # No arguments at all, before the quick-start training: the default model is missing.
    (tmp_path / "configs/quickstart").mkdir(parents=True)
    (tmp_path / atss_demo.QUICKSTART_CONFIG).write_text(QUICKSTART_CONFIG.read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as quickstart:
        atss_demo.main([])
    message = str(quickstart.value)
    assert "output/quickstart/model_final.pth" in message and "train the quick-start model first" in message
    assert not (tmp_path / "datasets").exists()  # failed before generating the default images


def test_unreadable_single_image(tiny_model, tmp_path, capsys):
    config_file, weights, _ = tiny_model
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    status = atss_demo.main(["--config-file", str(config_file), "--weights", str(weights),
                             "--images-dir", str(broken), "--output-dir", str(tmp_path / "out")])
    assert status == 1
    assert "cannot read image" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="neither a file nor a folder"):
        atss_demo.main(["--config-file", str(config_file), "--weights", str(weights),
                        "--images-dir", str(tmp_path / "missing.png")])


def test_demo_annotates_a_video_frame_by_frame(tiny_model, tmp_path, capsys):
    config_file, weights, _ = tiny_model
    video = tmp_path / "clip.avi"
    height, width = LANDSCAPE_HW
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (width, height))
    frames = [np.full((height, width, 3), 90 + 5 * i, dtype=np.uint8) for i in range(4)]  # flat: codec-proof
    for frame in frames:
        writer.write(frame)
    writer.release()

    status = atss_demo.main(["--config-file", str(config_file), "--weights", str(weights),
                             "--video", str(video), "--output-dir", str(tmp_path / "out")])

    assert status == 0
    assert capsys.readouterr().out.count("inference time") == len(frames)
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip_atss.mp4"))
    annotated = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        annotated.append(frame)
    capture.release()
    assert len(annotated) == len(frames)
    x1, y1, x2, y2 = LANDSCAPE_BOX
    for frame in annotated:
        assert frame.shape == (height, width, 3)
        # Lossy codec: the drawn outline is bright, the grey inside and far away stays grey.
        outline = np.concatenate([frame[y2, x1:x2], frame[y1:y2, x2]])
        assert outline.max(axis=1).mean() > 180
        assert frame[y1 + 10:y2 - 10, x1 + 10:x2 - 10].max() < 130
        assert frame[y2 + 10:].max() < 130
