"""Builders under the names the original ATSS code gave them, so that its scripts still work.

Everything here is built with one ``from_config`` per class; each function below only forwards
to one of them and is kept for the original API (the modules where the original defined these
names import them from here). Imports happen in the function bodies because those modules
import this one.
"""


def build_rpn(cfg, in_channels):
    """Original API: ``ATSSModule.from_config(cfg, in_channels)``."""
    from .rpn.atss.atss import ATSSModule
    return ATSSModule.from_config(cfg, in_channels)


def build_atss(cfg, in_channels):
    """Original API: ``ATSSModule.from_config(cfg, in_channels)``."""
    from .rpn.atss.atss import ATSSModule
    return ATSSModule.from_config(cfg, in_channels)


def make_atss_loss_evaluator(cfg, box_coder):
    """Original API: ``ATSSLossComputation.from_config(cfg, box_coder)``."""
    from .rpn.atss.loss import ATSSLossComputation
    return ATSSLossComputation.from_config(cfg, box_coder)


def make_atss_postprocessor(config, box_coder):
    """Original API: ``ATSSPostProcessor.from_config(config, box_coder)``."""
    from .rpn.atss.inference import ATSSPostProcessor
    return ATSSPostProcessor.from_config(config, box_coder)


def make_anchor_generator_atss(config):
    """Original API: ``AnchorGenerator.from_config(config)``."""
    from .rpn.anchor_generator import AnchorGenerator
    return AnchorGenerator.from_config(config)
