from .build import make_grad_scaler, make_lr_scheduler, make_optimizer, resolve_autocast_dtype
from .lr_scheduler import WarmupMultiStepLR

__all__ = ["make_optimizer", "make_lr_scheduler", "make_grad_scaler", "resolve_autocast_dtype",
           "WarmupMultiStepLR"]
