"""Which floating-point type the network runs in: the ``DTYPE`` (training) and ``TEST.DTYPE``
(inference) keys, both "float32", "bfloat16" or "float16".

A low-precision setting runs the network under ``torch.autocast`` (convolutions and matrix
products in that type, numerically sensitive ops such as GroupNorm's statistics in float32);
the losses and the detection post-processing (decoding, NMS, scores) always run in float32.
"""
import contextlib

import torch

from atss_core.layers.onednn_conv import onednn_has_bfloat16

__all__ = ["AUTOCAST_DTYPES", "autocast_dtype", "inference_autocast", "warn_if_slow_on_cpu"]

# Config value -> autocast dtype; None means plain float32, no autocast.
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(name, key="DTYPE"):
    """The autocast dtype for the config value ``name`` of ``key`` (None for "float32").

    Raises ValueError naming ``key`` and its choices for any other value.
    """
    if name not in AUTOCAST_DTYPES:
        raise ValueError(f"{key} must be one of {', '.join(AUTOCAST_DTYPES)}, got {name!r}")
    return AUTOCAST_DTYPES[name]


def inference_autocast(dtype, device):
    """Context manager for evaluation forwards in ``dtype`` on ``device``.

    Args:
        dtype: a config (its ``TEST.DTYPE`` is read), a ``TEST.DTYPE`` value such as
            "bfloat16", or a torch dtype (torch.float32 for none).
        device: the ``torch.device`` (or its name) the model runs on.

    Example::

        with torch.inference_mode(), inference_autocast(cfg, cfg.MODEL.DEVICE):
            detections = model(images)  # network in TEST.DTYPE, boxes and scores in float32
    """
    if isinstance(dtype, torch.dtype):
        low_precision = None if dtype == torch.float32 else dtype
        if low_precision not in AUTOCAST_DTYPES.values():
            raise ValueError(f"inference dtype must be float32, bfloat16 or float16, got {dtype}")
    else:
        name = dtype.TEST.DTYPE if hasattr(dtype, "TEST") else dtype
        low_precision = autocast_dtype(name, "TEST.DTYPE")
    if low_precision is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=low_precision)


def warn_if_slow_on_cpu(logger, name, device, key="DTYPE"):
    """Log one warning on ``logger`` when the config value ``name`` of ``key`` makes a run on
    ``device`` slower than float32 would be (a CPU without native kernels for that type).
    Raises ValueError (one line) for a value that is no dtype choice."""
    dtype = autocast_dtype(name, key)
    if torch.device(device).type != "cpu":
        return
    if dtype is torch.float16:
        logger.warning(f"{key} float16 on CPU is about 10x slower than bfloat16 (CPUs have few float16 "
                       f"kernels); {key} bfloat16 gives the same mixed-precision savings")
    elif dtype is torch.bfloat16 and not onednn_has_bfloat16():
        logger.warning(f"{key} bfloat16: this CPU has no native bfloat16 convolutions (oneDNN needs AVX-512 "
                       "or AVX-NE-CONVERT), so they are emulated and slower than float32; use float32 on "
                       "this machine")
