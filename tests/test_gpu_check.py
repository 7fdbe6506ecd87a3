"""tools/gpu_check.sh and tools/gpu_check.py without a GPU: syntax, the planned cases, the table."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, load_tool


@pytest.fixture(scope="module")
def gpu_check():
    return load_tool("gpu_check")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_shell_script_parses():
    subprocess.run(["bash", "-n", str(REPO_ROOT / "tools" / "gpu_check.sh")], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_shell_script_without_gpu_is_one_line(tmp_path):
    checkout = script_checkout(tmp_path)  # without any .whl/ wheels fetched for another Python
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(checkout / "tools" / "gpu_check.sh"), str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"gpu_check: no CUDA device visible to PyTorch ({sys.executable}); "
                                     "run this on a GPU machine")


def script_checkout(tmp_path):
    """A folder holding tools/gpu_check.sh alone (the script works from its parent folder)."""
    checkout = tmp_path / "checkout"
    (checkout / "tools").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tools" / "gpu_check.sh", checkout / "tools")
    return checkout


def write_probe_wheel(folder):
    """A minimal valid wheel of one module, ``atss_probe_module``."""
    import zipfile
    folder.mkdir()
    path = folder / "atss_probe_module-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("atss_probe_module.py", "VALUE = 42\n")
        wheel.writestr("atss_probe_module-1.0.dist-info/METADATA",
                       "Metadata-Version: 2.1\nName: atss-probe-module\nVersion: 1.0\n")
        wheel.writestr("atss_probe_module-1.0.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("atss_probe_module-1.0.dist-info/RECORD", "")
    return path


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_carried_wheels_are_installed_before_the_checks(tmp_path):
    """Wheels in .whl/ (tools/gpu_wheels.sh) go into SITE_DIR before anything is imported."""
    checkout = script_checkout(tmp_path)
    write_probe_wheel(checkout / ".whl")
    site = tmp_path / "site"
    env = dict(os.environ, PYTHON=sys.executable, SITE_DIR=str(site))
    subprocess.run(["bash", str(checkout / "tools" / "gpu_check.sh"), str(tmp_path / "out")],
                   env=env, capture_output=True, text=True, timeout=120)
    assert (site / "atss_probe_module.py").read_text() == "VALUE = 42\n"


def test_full_run_plans_every_row_the_issue_asks_for(gpu_check):
    cases = dict(gpu_check.benchmark_cases(gpu_check.parse_args([])))
    assert sorted(cases) == sorted(
        [f"inference {dtype} batch {batch}" for dtype in ("float32", "bfloat16", "float16") for batch in (1, 8)]
        + ["train float16 batch 2", "train float16 batch 8"])
    train = cases["train float16 batch 8"]
    assert train[train.index("--batch") + 1] == "8" and "--train" in train
    assert train[train.index("--gts") + 1] == "20,100"


def test_table_rows_from_results(gpu_check):
    inference = gpu_check.table_rows("inference bfloat16 batch 8", {"ATSS fast images/s": 151.04,
                                                                     "ATSS fast / FCOS": 0.5})
    assert inference == ["| inference bfloat16 batch 8 | 151.0 | 0.500 | | |"]
    train = gpu_check.table_rows("train float16 batch 2", {
        "train ATSS / FCOS 20 GTs": 0.41, "train assignment share 20 GTs": 0.021,
        "train ATSS images/s 20 GTs": 30.0, "ATSS peak memory GiB 20 GTs": 3.456})
    assert train == ["| train float16 batch 2, 20 GTs | 30.0 | 0.410 | 2.1% | 3.46 |"]
