"""Registries that map config strings to model-building functions.

* ``BACKBONES``: ``MODEL.BACKBONE.CONV_BODY`` -> ``fn(cfg) -> nn.Module`` with ``.out_channels``.
* ``RPN_HEADS``: head classes selected by name.
"""
from atss_core.utils.registry import Registry

BACKBONES = Registry()
RPN_HEADS = Registry()
