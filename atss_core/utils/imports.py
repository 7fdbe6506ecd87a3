"""Import a Python module from a file path (used for ``cfg.PATHS_CATALOG``)."""
import importlib.util
import os
import sys


def import_file(module_name, file_path, make_importable=False):
    """Execute ``file_path`` as a module called ``module_name`` and return it.

    With ``make_importable`` the module is also put in ``sys.modules``, so a later
    ``import module_name`` finds it. When ``module_name`` is already imported from this very
    file, that module is returned as it is instead of being executed again: state kept in it
    (for example entries added with ``DatasetCatalog.register``) survives.
    """
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"cannot import '{module_name}': no file at {file_path!r} "
                                "(check the path, e.g. cfg.PATHS_CATALOG)")
    loaded = sys.modules.get(module_name)
    loaded_from = getattr(loaded, "__file__", None)
    if loaded_from and os.path.exists(loaded_from) and os.path.samefile(loaded_from, file_path):
        return loaded

    spec = importlib.util.spec_from_file_location(module_name, file_path)
    if spec is None:
        raise ValueError(f"cannot import '{module_name}' from {file_path!r}: "
                         "it must be a Python source file ending in .py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if make_importable:
        sys.modules[module_name] = module
    return module
