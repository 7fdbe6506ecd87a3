"""Registries that map config strings to model-building functions.

* ``BACKBONES``: ``MODEL.BACKBONE.CONV_BODY`` -> ``fn(cfg) -> nn.Module`` with ``.out_channels``.
"""
from atss_core.utils.registry import Registry

BACKBONES = Registry()
