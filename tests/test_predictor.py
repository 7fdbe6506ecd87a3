"""atss_core.predictor.Predictor, atss_core.model_zoo and the installable wheel.

Oracle for the predictor: the hand-set model of test_demo.py, whose one detection per class is
known in advance, in the original image's pixels. Oracle for the wheel: the same predictor run
from this checkout.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from atss_core import model_zoo
from atss_core.predictor import Predictor
from conftest import REPO_ROOT
from test_demo import (CATEGORIES, LANDSCAPE_BOX, LANDSCAPE_HW, PORTRAIT_BOX, PORTRAIT_HW, SCORES,  # noqa: F401
                       noise_image, tiny_model)


@pytest.mark.parametrize("size, box", [(LANDSCAPE_HW, LANDSCAPE_BOX), (PORTRAIT_HW, PORTRAIT_BOX)])
def test_predictor_returns_boxes_in_original_pixels(tiny_model, size, box):
    config_file, weights, _ = tiny_model
    predictor = Predictor(config_file, weights, opts=["MODEL.DEVICE", "cpu"])
    result = predictor(noise_image(*size))
    assert result["labels"].tolist() == [1, 2, 3, 4]
    assert result["class_names"] == [category["name"] for category in CATEGORIES]
    np.testing.assert_allclose(result["scores"], SCORES, atol=1e-4)
    assert result["boxes"].dtype == np.float32
    np.testing.assert_allclose(result["boxes"], np.tile(box, (4, 1)), atol=0.05)


def test_predict_batch_gives_each_image_its_own_detections(tiny_model):
    config_file, weights, _ = tiny_model
    predictor = Predictor(config_file, weights, opts=["MODEL.DEVICE", "cpu"])
    images = [noise_image(*LANDSCAPE_HW), noise_image(*PORTRAIT_HW), noise_image(*LANDSCAPE_HW)]
    results = predictor.predict_batch(images)
    assert len(results) == 3 and predictor.predict_batch([]) == []
    assert len(predictor.predict_batch(image for image in images)) == 3
    for result, box in zip(results, (LANDSCAPE_BOX, PORTRAIT_BOX, LANDSCAPE_BOX)):
        assert result["labels"].tolist() == [1, 2, 3, 4]
        np.testing.assert_allclose(result["scores"], SCORES, atol=1e-4)
        np.testing.assert_allclose(result["boxes"], np.tile(box, (4, 1)), atol=0.05)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 BGR numpy image"):
        predictor.predict_batch([images[0], images[0][:, :, 0]])


def test_predictor_rgb_input_and_opts(tiny_model):
    config_file, weights, _ = tiny_model
    image = noise_image(*LANDSCAPE_HW)
    bgr = Predictor(config_file, weights, opts=["MODEL.DEVICE", "cpu"])(image)
    rgb_predictor = Predictor(config_file, weights, opts=["MODEL.DEVICE", "cpu", "MODEL.ATSS.INFERENCE_TH", 0.3],
                              input_format="RGB")
    rgb = rgb_predictor(np.ascontiguousarray(image[:, :, ::-1]))
    assert rgb_predictor.cfg.MODEL.ATSS.INFERENCE_TH == 0.3
    # INFERENCE_TH applies to the classification probability (the score squared): 0.45 and 0.3 go
    assert rgb["labels"].tolist() == [1, 2]
    np.testing.assert_allclose(rgb["boxes"], bgr["boxes"][:2], atol=1e-4)


def test_predictor_rejects_bad_images(tiny_model):
    config_file, weights, _ = tiny_model
    predictor = Predictor(config_file, weights, opts=["MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 BGR numpy image, got shape \(4, 4\)"):
        predictor(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="input_format"):
        Predictor(config_file, weights, input_format="BGRA")


def test_predictor_names_a_bad_device_in_one_line(tiny_model):
    """The same check as the command-line tools (engine.launch.resolve_device), as a ValueError."""
    config_file, weights, _ = tiny_model
    with pytest.raises(ValueError, match="MODEL.DEVICE 'gpu' is not a device name; use cpu or cuda"):
        Predictor(config_file, weights, opts=["MODEL.DEVICE", "gpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="MODEL.DEVICE is 'cuda' but torch sees no GPU on this machine"):
            Predictor(config_file, weights, opts=["MODEL.DEVICE", "cuda"])


def test_model_zoo_config_files():
    path = Path(model_zoo.get_config_file("quickstart/atss_mnv2_fpn_shapes.yaml"))
    assert path.read_text() == (REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml").read_text()
    assert "atss/atss_R_50_FPN_1x.yaml" in model_zoo.list_config_files()
    with pytest.raises(FileNotFoundError, match="no shipped config 'atss/nope.yaml'; choose one of: .*quickstart"):
        model_zoo.get_config_file("atss/nope.yaml")


WHEEL_SCRIPT = """
import json, sys
import numpy as np
import atss_core, atss_core._C
from atss_core import model_zoo
from atss_core.predictor import Predictor
assert atss_core.__file__.startswith(sys.prefix), atss_core.__file__
predictor = Predictor(model_zoo.get_config_file("quickstart/atss_mnv2_fpn_shapes.yaml"), sys.argv[1],
                      opts=["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CONVS", 1, "INPUT.MIN_SIZE_TEST", 96,
                            "INPUT.MAX_SIZE_TEST", 128])
result = predictor(np.load(sys.argv[2]))
print(json.dumps({"boxes": result["boxes"].tolist(), "labels": result["labels"].tolist(),
                  "names": result["class_names"], "ops": atss_core._C.__file__}))
"""


def _copy_sources(destination):
    """The checkout's tracked files (mtimes kept), plus its compiled extension placed where
    setup.py's build step looks, unless ATSS_TEST_WHEEL_COMPILE=1 asks for a full compile.

    Returns the environment for ``pip wheel``: when the extension was placed, ninja is left off
    PATH, because torch's ninja backend always recompiles while the plain one skips an extension
    that is newer than its sources (a compile takes minutes on a loaded 2-core machine)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO_ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, destination / name)
    built = sorted((REPO_ROOT / "atss_core").glob("_C*.so"))
    if built and os.environ.get("ATSS_TEST_WHEEL_COMPILE") != "1":
        build_lib = destination / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}" / "atss_core"
        build_lib.mkdir(parents=True)
        shutil.copy2(built[0], build_lib / built[0].name)
        path = [folder for folder in os.environ.get("PATH", "").split(os.pathsep)
                if not (Path(folder) / "ninja").exists()]
        return {**os.environ, "PATH": os.pathsep.join(path)}
    return dict(os.environ)


def test_wheel_installs_and_predicts_outside_checkout(tiny_model, tmp_path):
    """pip wheel --no-build-isolation, pip install (not -e) into a fresh venv, Predictor run from a
    folder outside the checkout with a shipped config."""
    _, weights, _ = tiny_model
    sources, wheels, venv, elsewhere = (tmp_path / name for name in ("src", "wheels", "venv", "elsewhere"))
    sources.mkdir()
    elsewhere.mkdir()
    build_environment = _copy_sources(sources)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(wheels), str(sources)], check=True, timeout=1800, env=build_environment)
    wheel = next(wheels.glob("atss_core-*.whl"))

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    venv_python = venv / "bin" / "python"
    venv_site = subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    # torch and the other dependencies come from this interpreter's site-packages
    Path(venv_site, "shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv_python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, timeout=600)

    image = noise_image(*LANDSCAPE_HW)
    np.save(elsewhere / "image.npy", image)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = subprocess.run([str(venv_python), "-c", WHEEL_SCRIPT, str(weights), "image.npy"], cwd=elsewhere,
                         env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    installed = json.loads(run.stdout.strip().splitlines()[-1])
    assert installed["ops"].startswith(str(venv))
    assert installed["labels"] == [1, 2, 3, 4]
    assert installed["names"] == ["circle", "rectangle", "triangle", "cross"]  # quick-start data set names
    np.testing.assert_allclose(installed["boxes"], np.tile(LANDSCAPE_BOX, (4, 1)), atol=0.05)
