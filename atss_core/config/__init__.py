"""Configuration: ``cfg`` is the default yacs ``CfgNode`` (clone it before changing it)."""
import ast
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
    content = _check_yaml_mapping(config_file)
    try:
        config.merge_from_other_cfg(type(config)(_floats_for_ints(content or {}, config)))
        config.merge_from_list(_float_opts_for_ints(list(opts or []), config))
    except (KeyError, ValueError, AssertionError, TypeError, OverflowError) as error:
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
    return content


# yacs refuses an int for a float key ("BASE_LR: 1", "MODEL.ATSS.INFERENCE_TH 0") as a type
# mismatch; these two turn such ints into floats before merging. Everything else is left to yacs.

def _floats_for_ints(values, config):
    """The yaml mapping ``values`` with every int set on a float key of ``config`` made a float."""
    converted = {}
    for key, value in values.items():
        default = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict) and isinstance(default, dict):
            value = _floats_for_ints(value, default)
        elif _is_int(value) and isinstance(default, float):
            value = float(value)
        converted[key] = value
    return converted


def _float_opts_for_ints(opts, config):
    """The ``KEY VALUE`` list ``opts`` with every int value of a float key written as a float."""
    converted = list(opts)
    for index in range(0, len(opts) - 1, 2):
        default = config
        for part in str(opts[index]).split("."):
            default = default.get(part) if isinstance(default, dict) else None
        value = _literal(opts[index + 1])
        if isinstance(default, float) and _is_int(value):
            converted[index + 1] = repr(float(value))
    return converted


def _literal(text):
    try:
        return ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        return text


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)
