"""The configs that ship with atss_core, by their path under the repository's ``configs/``::

    from atss_core import model_zoo
    config_file = model_zoo.get_config_file("quickstart/atss_mnv2_fpn_shapes.yaml")

An installed wheel holds them in ``atss_core/configs``; a source checkout reads ``configs/``
itself. (Downloading weights by URL is ``atss_core.utils.model_zoo``.)
"""
from pathlib import Path

__all__ = ["get_config_file", "list_config_files"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _configs_dir():
    installed = _PACKAGE_DIR / "configs"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "configs"


def list_config_files():
    """Relative paths of every shipped config, e.g. ``"atss/atss_R_50_FPN_1x.yaml"``, sorted."""
    root = _configs_dir()
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.yaml"))


def get_config_file(config_path):
    """Absolute path (str) of the shipped config ``config_path``, relative to ``configs/``
    (e.g. ``"atss/atss_R_50_FPN_1x.yaml"``). Raises FileNotFoundError naming the choices."""
    path = _configs_dir() / config_path
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config {config_path!r}; choose one of: "
                                f"{', '.join(list_config_files())}")
    return str(path)
