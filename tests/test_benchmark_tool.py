"""tools/benchmark_atss.py: FCOS is timed on the same input size as ATSS; bad inputs are one line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, load_tool

TOOL = REPO_ROOT / "tools" / "benchmark_atss.py"


@pytest.fixture(scope="module")
def benchmark():
    return load_tool("benchmark_atss")


@pytest.mark.parametrize("height, width", [(96, 160), (160, 96)])
def test_fcos_backbone_sees_the_requested_size(benchmark, height, width):
    # torchvision's stock transform would scale the short side to 800 pixels.
    fcos = benchmark.build_fcos(height, width)
    images = [torch.rand(3, height, width)]
    assert benchmark.fcos_backbone_input_shape(fcos, images) == (1, 3, height, width)


def test_defaults_follow_the_mode(benchmark):
    inference = benchmark.parse_args([])
    train = benchmark.parse_args(["--train", "--dtype", "bfloat16", "MODEL.CHANNELS_LAST", "True"])
    assert (inference.batch, inference.height, inference.width) == (1, 800, 1216)
    assert (train.batch, train.height, train.width, train.gts) == (2, 640, 864, "100,500")
    assert train.opts == ["MODEL.CHANNELS_LAST", "True"]


def test_fcos_trainable_layers_match_freeze_at_2(benchmark):
    fcos = benchmark.build_fcos(64, 64, trainable_layers=3)
    trainable = {name.split(".")[0] for name, p in fcos.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}  # stem and layer1 frozen, as FREEZE_CONV_BODY_AT 2


@pytest.mark.parametrize("option, value, expected", [
    ("--weights", "missing.pth", "weights file 'missing.pth' not found"),
    ("--config-file", "missing.yaml", "config: "),
])
def test_bad_input_is_one_line(tmp_path, option, value, expected):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, str(TOOL), option, value, "--height", "64", "--width", "64"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_export_benchmark_runs_and_reports_both_runtimes(tmp_path):
    """tools/benchmark_export.py end to end on a tiny quick-start model: it exports, runs
    onnxruntime and PyTorch on the same image, and prints one table row for each."""
    pytest.importorskip("onnxruntime")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "benchmark_export.py"), "--config",
         str(REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml"), "--height", "96", "--width", "128",
         "--runs", "1", "--warmup", "0", "--skip-torchscript", "--weight-fill", str(tmp_path / "none.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and " s |" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["PyTorch fast path", "onnxruntime"]


def test_low_precision_run_also_times_fcos_in_float32(benchmark, tmp_path, capsys):
    """With --dtype bfloat16 the tool reports ATSS's fast path against FCOS in float32 (the
    reference of the low-precision goal) next to the same-dtype ratios."""
    summary = tmp_path / "summary.json"
    results = benchmark.main([
        "--device", "cpu", "--config-file", str(REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml"),
        "--height", "64", "--width", "96", "--runs", "1", "--warmup", "0", "--skip-assign", "--dtype", "bfloat16",
        "--weight-fill", str(tmp_path / "none.py"), "--json", str(summary)])
    assert "ATSS fast (bfloat16) / FCOS float32" in capsys.readouterr().out
    medians = json.loads(summary.read_text())["medians_s"]
    assert medians["FCOS float32 total"] != medians["FCOS total"]  # timed apart from the bfloat16 run
    assert results["ATSS fast / FCOS float32"] == pytest.approx(
        medians["ATSS fast total"] / medians["FCOS float32 total"])
