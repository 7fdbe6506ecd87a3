from .build import make_data_loader
from .errors import DataError

__all__ = ["DataError", "make_data_loader"]
