"""Which floating-point type the network runs in: the ``DTYPE`` (training) and ``TEST.DTYPE``
(inference) keys, both "float32", "bfloat16" or "float16".

A low-precision setting runs the network under ``torch.autocast`` (convolutions and matrix
products in that type, numerically sensitive ops such as GroupNorm's statistics in float32);
the losses and the detection post-processing (decoding, NMS, scores) always run in float32.
"""
import contextlib

import torch

__all__ = ["AUTOCAST_DTYPES", "autocast_dtype", "inference_autocast"]

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
