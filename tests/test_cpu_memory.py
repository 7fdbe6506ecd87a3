"""atss_core.utils.cpu_memory: freed large CPU tensors are reused without new page faults.

The oracle is the kernel's count of minor page faults (``getrusage``): running the same small
conv net on 46 MB maps again faults their pages in again at every step under glibc's defaults
(each output is mmap'd anew), and at most steps none once ``keep_freed_cpu_memory`` is in force.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

PROBE = """
import json, resource, sys, torch
from atss_core.utils.cpu_memory import keep_freed_cpu_memory
applied = keep_freed_cpu_memory(sys.argv[1])  # the run's MODEL.DEVICE
torch.manual_seed(0)
convs = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()).eval()
images = torch.randn(2, 3, 600, 600)  # the conv outputs are 46 MB: above glibc's mmap threshold
faults = []
with torch.inference_mode():
    for _ in range(6):  # the same maps at every step, as in evaluation or training
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        convs(images)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


PAGES_PER_MAP = 2 * 16 * 600 * 600 * 4 // os.sysconf("SC_PAGE_SIZE")  # one conv output


def probe(keep, device="cpu"):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), ATSS_KEEP_FREED_MEMORY=keep)
    run = subprocess.run([sys.executable, "-c", PROBE, device], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_large_blocks_are_reused_without_page_faults():
    pages = PAGES_PER_MAP
    default = probe("0")
    assert default["applied"] is False
    assert min(default["faults"][2:]) > pages, default["faults"]  # every map is mapped and faulted in again

    kept = probe("1")
    assert kept["applied"] is True
    # Freed blocks are reused: most steps after the first fault in nothing. The heap's layout varies
    # from run to run, so an odd step may still fault in one map.
    later = kept["faults"][1:]
    assert sorted(later)[len(later) // 2] < pages // 10, kept["faults"]
    assert sum(later) < sum(default["faults"][1:]) / 4, (kept["faults"], default["faults"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_gpu_runs_keep_glibc_defaults():
    """A run whose MODEL.DEVICE is cuda leaves malloc alone: every step faults its maps in again."""
    gpu_run = probe("1", device="cuda")
    assert gpu_run["applied"] is False
    assert min(gpu_run["faults"][2:]) > PAGES_PER_MAP, gpu_run["faults"]
