"""Dense-head dispatch: ``build_rpn`` returns the detector head selected by the config.

This project implements the ATSS head only (``MODEL.ATSS_ON``), which is also what every
configuration of the original ATSS repository uses.
"""
from atss_core.modeling.rpn.atss.atss import build_atss

__all__ = ["build_rpn"]


def build_rpn(cfg, in_channels):
    """The head module for ``in_channels``-channel FPN features (``ATSSModule``)."""
    if cfg.MODEL.ATSS_ON:
        return build_atss(cfg, in_channels)
    raise NotImplementedError(
        "MODEL.ATSS_ON is False, but the ATSS head is the only one implemented here "
        "(no RPN, FCOS or RetinaNet heads): set MODEL.ATSS_ON True, e.g. with a configs/atss/*.yaml file")
