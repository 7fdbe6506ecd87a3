"""The one place that loads the compiled ops (``atss_core._C``).

Every op in :mod:`atss_core.layers` asks :func:`compiled_ops` for the extension and
uses its kernels when it gets one, or a torchvision / pure-PyTorch fallback with the
same semantics when it gets ``None``: the extension is not built, it was built without
CUDA and the tensors are on a GPU, or the fallback is forced (tests do that with
:func:`fallback_forced`). A missing or CPU-only extension is reported by one warning.
"""
import contextlib
import importlib
import warnings

import torch

_extension = None        # the imported atss_core._C, once loaded
_load_error = None       # why it could not be imported
_loaded = False
_force_fallback = False
_warned = set()


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _load():
    global _extension, _load_error, _loaded
    if not _loaded:
        _loaded = True
        try:
            _extension = importlib.import_module("atss_core._C")
        except ImportError as error:
            _load_error = error
    return _extension


def compiled_ops(device):
    """``atss_core._C`` when its kernels can run on ``device``, else ``None``."""
    if _force_fallback:
        return None
    extension = _load()
    if extension is None:
        _warn_once("missing", f"atss_core._C could not be imported ({_load_error}); using slower "
                              "torchvision/PyTorch fallbacks. Build it with "
                              "`pip install --no-build-isolation -e .` from the repository root.")
        return None
    if torch.device(device).type == "cuda" and not extension.compiled_with_cuda():
        _warn_once("no_cuda", "atss_core._C was built without CUDA kernels; CUDA tensors use the "
                              "torchvision/PyTorch fallbacks. Rebuild with FORCE_CUDA=1 to compile them.")
        return None
    return extension


def has_compiled_ops():
    """Whether ``atss_core._C`` is importable (regardless of a forced fallback)."""
    return _load() is not None


@contextlib.contextmanager
def fallback_forced(enabled=True):
    """Within the block, every op uses its fallback path (``enabled=True``)."""
    global _force_fallback
    previous, _force_fallback = _force_fallback, enabled
    try:
        yield
    finally:
        _force_fallback = previous
