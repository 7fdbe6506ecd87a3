from .build import build_transforms
from .transforms import Compose, Normalize, RandomHorizontalFlip, Resize, ToTensor, seeded_random

__all__ = ["build_transforms", "Compose", "Normalize", "RandomHorizontalFlip", "Resize", "ToTensor",
           "seeded_random"]
