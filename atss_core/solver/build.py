"""Optimizer, learning-rate schedule and mixed-precision settings from the config."""
import logging

import torch

from atss_core.engine.precision import autocast_dtype
from .lr_scheduler import WarmupMultiStepLR

logger = logging.getLogger("atss_core.trainer")


def make_optimizer(cfg, model):
    """SGD with momentum, one parameter per group.

    Weights use SOLVER.BASE_LR and SOLVER.WEIGHT_DECAY (GroupNorm weights and the head's
    Scale parameters included). Every parameter whose name contains "bias" uses
    BASE_LR * BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS. Deformable-conv offset predictors
    have their lr further scaled by DCONV_OFFSETS_LR_FACTOR. Frozen parameters
    (``requires_grad`` False) are left out.
    """
    solver = cfg.SOLVER
    param_groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, weight_decay = solver.BASE_LR, solver.WEIGHT_DECAY
        if "bias" in name:
            lr = solver.BASE_LR * solver.BIAS_LR_FACTOR
            weight_decay = solver.WEIGHT_DECAY_BIAS
        if name.endswith((".offset.weight", ".offset.bias")):
            logger.info("set lr factor of %s as %s", name, solver.DCONV_OFFSETS_LR_FACTOR)
            lr *= solver.DCONV_OFFSETS_LR_FACTOR
        param_groups.append({"params": [param], "lr": lr, "weight_decay": weight_decay})
    return torch.optim.SGD(param_groups, solver.BASE_LR, momentum=solver.MOMENTUM)


def make_lr_scheduler(cfg, optimizer):
    """WarmupMultiStepLR from SOLVER.STEPS, GAMMA and the WARMUP_* keys."""
    solver = cfg.SOLVER
    return WarmupMultiStepLR(optimizer, solver.STEPS, solver.GAMMA,
                             warmup_factor=solver.WARMUP_FACTOR,
                             warmup_iters=solver.WARMUP_ITERS,
                             warmup_method=solver.WARMUP_METHOD)


def resolve_autocast_dtype(cfg):
    """The autocast dtype selected by DTYPE ("float32", "float16" or "bfloat16").

    Returns None for "float32", meaning no autocast.
    """
    # DTYPE is a key this project adds; the original trained in float32 only.
    return autocast_dtype(cfg.DTYPE, "DTYPE")


def make_grad_scaler(cfg):
    """Loss scaler for mixed precision: enabled for DTYPE "float16" only.

    bfloat16 has float32's exponent range, so its gradients need no scaling.
    """
    device_type = torch.device(cfg.MODEL.DEVICE).type
    enabled = resolve_autocast_dtype(cfg) is torch.float16
    return torch.amp.GradScaler(device_type, enabled=enabled)
