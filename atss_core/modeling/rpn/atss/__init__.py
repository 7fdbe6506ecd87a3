"""ATSS: head, box coder, anchor-assignment loss and post-processing."""
from .atss import ATSSHead, ATSSModule, build_atss
from .box_coder import BoxCoder
from .inference import ATSSPostProcessor, make_atss_postprocessor

__all__ = ["ATSSHead", "ATSSModule", "ATSSPostProcessor", "BoxCoder", "build_atss",
           "make_atss_postprocessor"]
