"""``build_detection_model``: the meta-architecture named by ``MODEL.META_ARCHITECTURE``."""
from .generalized_rcnn import GeneralizedRCNN

_DETECTION_META_ARCHITECTURES = {"GeneralizedRCNN": GeneralizedRCNN}


def build_detection_model(cfg):
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in _DETECTION_META_ARCHITECTURES:
        raise KeyError(f"unknown MODEL.META_ARCHITECTURE {name!r}: use one of "
                       f"{sorted(_DETECTION_META_ARCHITECTURES)}")
    return _DETECTION_META_ARCHITECTURES[name](cfg)
