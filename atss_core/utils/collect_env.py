"""Environment report written at the start of the training log."""
import PIL
from torch.utils.collect_env import get_pretty_env_info


def get_pil_version():
    return f"\n        Pillow ({PIL.__version__})"


def collect_env_info():
    """torch's environment summary (versions, CUDA, GPUs) plus the Pillow version."""
    return get_pretty_env_info() + get_pil_version()
