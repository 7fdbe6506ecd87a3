"""Configuration: ``cfg`` is the default yacs ``CfgNode`` (clone it before changing it)."""
import os

import yaml

from .defaults import _C as cfg

__all__ = ["cfg", "merge_config"]


def merge_config(config, config_file, opts=None):
    """Merge ``config_file`` and then the ``KEY VALUE`` overrides ``opts`` into ``config``,
    freeze it and return it.

    Raises, with a one-line message that the command-line tools print as it is:
        FileNotFoundError: no config file given, or it does not exist.
        ValueError: a file that is not a yaml mapping, an unknown key, a value of the wrong
            type, or an odd number of overrides.
    """
    if not config_file:
        raise FileNotFoundError("no config file given: pass --config-file FILE")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} not found; pass an existing yaml with --config-file")
    _check_yaml_mapping(config_file)
    try:
        config.merge_from_file(config_file)
        config.merge_from_list(list(opts or []))
    except (KeyError, ValueError, AssertionError, TypeError) as error:
        message = error.args[0] if error.args else repr(error)
        raise ValueError(f"bad config option ({message}); check {config_file} and the KEY VALUE pairs on "
                         "the command line (keys are those of atss_core/config/defaults.py)") from None
    config.freeze()
    return config


def _check_yaml_mapping(config_file):
    """Raise a one-line ValueError unless ``config_file`` is a yaml file holding a mapping
    (yacs would raise a bare Exception, a multi-line yaml error or an AttributeError)."""
    extension = os.path.splitext(config_file)[1].lower()
    if extension not in (".yaml", ".yml"):
        raise ValueError(f"config file {config_file} is not a .yaml file; --config-file takes a yaml config "
                         "such as configs/atss/atss_R_50_FPN_1x.yaml (annotation .json files go in DATASETS)")
    try:
        with open(config_file) as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"config file {config_file} is not valid yaml ({problem}{where})") from None
    if content is not None and not isinstance(content, dict):
        raise ValueError(f"config file {config_file} holds a yaml {type(content).__name__}, expected "
                         "a mapping of config keys (KEY: value lines, e.g. 'SOLVER:' then '  BASE_LR: 0.01')")
