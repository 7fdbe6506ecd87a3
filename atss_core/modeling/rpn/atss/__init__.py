"""ATSS: head, box coder, anchor-assignment loss and post-processing."""
from atss_core.modeling.original_api import build_atss, make_atss_postprocessor  # original API
from .atss import ATSSHead, ATSSModule
from .box_coder import BoxCoder
from .inference import ATSSPostProcessor

__all__ = ["ATSSHead", "ATSSModule", "ATSSPostProcessor", "BoxCoder", "build_atss",
           "make_atss_postprocessor"]
