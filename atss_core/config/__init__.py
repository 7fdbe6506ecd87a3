"""Configuration: ``cfg`` is the default yacs ``CfgNode`` (clone it before changing it)."""
import os

from .defaults import _C as cfg

__all__ = ["cfg", "merge_config"]


def merge_config(config, config_file, opts=None):
    """Merge ``config_file`` and then the ``KEY VALUE`` overrides ``opts`` into ``config``,
    freeze it and return it.

    Raises, with a one-line message that the command-line tools print as it is:
        FileNotFoundError: no config file given, or it does not exist.
        ValueError: an unknown key, a value of the wrong type, or an odd number of overrides.
    """
    if not config_file:
        raise FileNotFoundError("no config file given: pass --config-file FILE")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} not found; pass an existing yaml with --config-file")
    try:
        config.merge_from_file(config_file)
        config.merge_from_list(list(opts or []))
    except (KeyError, ValueError, AssertionError, TypeError) as error:
        message = error.args[0] if error.args else repr(error)
        raise ValueError(f"bad config option ({message}); check {config_file} and the KEY VALUE pairs on "
                         "the command line (keys are those of atss_core/config/defaults.py)") from None
    config.freeze()
    return config
