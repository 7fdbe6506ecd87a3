"""Configuration: ``cfg`` is the default yacs ``CfgNode`` (clone it before changing it)."""
from .defaults import _C as cfg

__all__ = ["cfg"]
