"""The original module path of ``build_rpn`` (original API; defined in ``modeling/original_api.py``)."""
from atss_core.modeling.original_api import build_rpn

__all__ = ["build_rpn"]
