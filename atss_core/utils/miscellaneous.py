"""Small file-system and reproducibility helpers."""
import os
import random

import numpy as np
import torch

from .comm import is_main_process


def mkdir(path):
    """Create ``path`` and its parents; an existing folder is fine."""
    os.makedirs(path, exist_ok=True)


def save_config(cfg, path):
    """Write the merged config as YAML (main process only)."""
    if is_main_process():
        with open(path, "w") as f:
            f.write(cfg.dump())


def seed_all_rng(seed):
    """Seed Python's, NumPy's and torch's (CPU and every GPU) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
