"""Shared test fixtures.

Golden data recorded from the original ATSS lives in ``../shared/golden`` beside the
clone (override with ATSS_GOLDEN_DIR). Tests that need it skip with a clear reason when
it is absent.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("ATSS_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))

# CPU always; CUDA too whenever a GPU is present (those cases skip, not fail, without one).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def golden_path(name):
    """Path of a golden file; skips the calling test when the golden folder is absent."""
    path = GOLDEN_DIR / name
    if not path.exists():
        pytest.skip(f"golden data {path} not found (expected ../shared/golden beside the clone, "
                    "or set ATSS_GOLDEN_DIR)")
    return path


def load_golden(name):
    """Load a golden ``.pt`` (weights_only) or ``.json`` file by name."""
    path = golden_path(name)
    if path.suffix == ".json":
        import json
        return json.loads(path.read_text())
    return torch.load(path, weights_only=True)


def load_tool(name):
    """``tools/<name>.py`` loaded as a fresh module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"atss_tool_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weightfill():
    """The golden data's deterministic weight-fill module (``fill_state_dict``)."""
    path = golden_path("weightfill.py")
    spec = importlib.util.spec_from_file_location("atss_golden_weightfill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_exit(main, argv):
    """The message a command-line tool's ``main(argv)`` exits with; asserts it is a failure
    (exit status != 0) told in one line, without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code)
    assert exit_info.value.code not in (0, None)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
