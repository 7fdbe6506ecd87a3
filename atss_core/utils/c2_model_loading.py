"""Load Detectron (Caffe2) ``.pkl`` weights, e.g. the ImageNet-pretrained ResNets.

The file is a pickled dict of numpy arrays named after Caffe2 blobs (``conv1_w``,
``res_conv1_bn_s``, ``res2_0_branch2a_w``, ...). The blob names are rewritten into the
torchvision-style names of our ResNet (``conv1.weight``, ``bn1.weight``,
``layer1.0.conv1.weight``, ...); the checkpointer then matches them to model keys by
suffix. Conv biases and ``fc1000`` find no model key and are dropped there. The arrays
are used as they are (no transpose or reshape).
"""
import logging
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch

from atss_core.utils.registry import Registry

logger = logging.getLogger(__name__)

# Ordered (old, new) substring replacements. Order matters: the first rules split blob
# names at "_" and expand ".w"/".b", which also damages "branch" (".b" -> ".bias"), and a
# later rule repairs that.
_BASIC_RESNET_RENAMES = (
    ("_", "."),
    (".w", ".weight"),
    (".bn", "_bn"),
    (".b", ".bias"),
    ("_bn.s", "_bn.scale"),
    (".biasranch", ".branch"),
    ("bbox.pred", "bbox_pred"),
    ("cls.score", "cls_score"),
    ("res.conv1_", "conv1_"),
    # RPN / Faster R-CNN blobs
    (".biasbox", ".bbox"),
    ("conv.rpn", "rpn.conv"),
    ("rpn.bbox.pred", "rpn.bbox_pred"),
    ("rpn.cls.logits", "rpn.cls_logits"),
    # Caffe2 folds BN into an affine channel op; its scale is the BN weight
    ("_bn.scale", "_bn.weight"),
    # torchvision ResNet names
    ("conv1_bn.", "bn1."),
    ("res2.", "layer1."),
    ("res3.", "layer2."),
    ("res4.", "layer3."),
    ("res5.", "layer4."),
    (".branch2a.", ".conv1."),
    (".branch2a_bn.", ".bn1."),
    (".branch2b.", ".conv2."),
    (".branch2b_bn.", ".bn2."),
    (".branch2c.", ".conv3."),
    (".branch2c_bn.", ".bn3."),
    (".branch1.", ".downsample.0."),
    (".branch1_bn.", ".downsample.1."),
    # GroupNorm ResNets
    ("conv1.gn.s", "bn1.weight"),
    ("conv1.gn.bias", "bn1.bias"),
    ("conv2.gn.s", "bn2.weight"),
    ("conv2.gn.bias", "bn2.bias"),
    ("conv3.gn.s", "bn3.weight"),
    ("conv3.gn.bias", "bn3.bias"),
    ("downsample.0.gn.s", "downsample.1.weight"),
    ("downsample.0.gn.bias", "downsample.1.bias"),
)

# Detectron head blobs (Mask / Keypoint R-CNN), then our RPN nesting.
_HEAD_RENAMES = (
    ("mask.fcn.logits", "mask_fcn_logits"),
    (".[mask].fcn", "mask_fcn"),
    ("conv5.mask", "conv5_mask"),
    ("kps.score.lowres", "kps_score_lowres"),
    ("kps.score", "kps_score"),
    ("conv.fcn", "conv_fcn"),
    ("rpn.", "rpn.head."),
)

# Caffe2 name of the last block of each ResNet stage ("<stage>.<last block>"), which is
# where Detectron's FPN blobs hang.
_C2_STAGE_NAMES = {
    "R-50": ["1.2", "2.3", "3.5", "4.2"],
    "R-101": ["1.2", "2.3", "3.22", "4.2"],
    "R-152": ["1.2", "2.7", "3.35", "4.2"],
}


def _apply_renames(name, renames):
    for old, new in renames:
        name = name.replace(old, new)
    return name


def _fpn_renames(stage_names):
    """Replacement rules for Detectron FPN blob names given the stage names."""
    renames = []
    for fpn_level, stage_name in enumerate(stage_names, 1):
        lateral = ".lateral" if fpn_level < 4 else ""
        renames.append((f"fpn.inner.layer{stage_name}.sum{lateral}", f"fpn_inner{fpn_level}"))
        renames.append((f"fpn.layer{stage_name}.sum", f"fpn_layer{fpn_level}"))
    renames += [
        ("rpn.conv.fpn2", "rpn.conv"),
        ("rpn.bbox_pred.fpn2", "rpn.bbox_pred"),
        ("rpn.cls_logits.fpn2", "rpn.cls_logits"),
    ]
    return renames


def _rename_c2_blob(blob_name, stage_names):
    """Our name for one Caffe2 blob, e.g. ``res2_0_branch2a_w`` -> ``layer1.0.conv1.weight``."""
    # ResNeXt files call the classifier "pred"; renaming it avoids a clash with heads.
    name = {"pred_b": "fc1000_b", "pred_w": "fc1000_w"}.get(blob_name, blob_name)
    name = _apply_renames(name, _BASIC_RESNET_RENAMES)
    name = _apply_renames(name, _fpn_renames(stage_names))
    return _apply_renames(name, _HEAD_RENAMES)


def _rename_weights_for_resnet(weights, stage_names):
    """Rename Caffe2 blobs to our names and turn them into tensors.

    Args:
        weights (dict[str, np.ndarray]): blobs as read from the ``.pkl``.
        stage_names (list[str]): entry of ``_C2_STAGE_NAMES`` for the architecture.

    Returns:
        OrderedDict[str, Tensor]: renamed tensors, in sorted blob-name order. Optimizer
        state (``*_momentum``) and ``weight_order`` entries are left out.
    """
    blob_names = sorted(name for name in weights
                        if "_momentum" not in name and "weight_order" not in name)
    width = max((len(name) for name in blob_names), default=1)
    logger.info("Remapping C2 weights")
    renamed = OrderedDict()
    for blob_name in blob_names:
        new_name = _rename_c2_blob(blob_name, stage_names)
        logger.info("C2 name: %-*s mapped name: %s", width, blob_name, new_name)
        renamed[new_name] = torch.from_numpy(np.asarray(weights[blob_name]))
    return renamed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else.

    A pickle may name any importable callable; allowing only numpy's array
    reconstruction (plus the codec Python 2 pickles use for byte strings) means a
    weights file cannot run code.
    """

    def __init__(self, file):
        super().__init__(file, encoding="latin1")  # Detectron files are Python 2 pickles
        multiarray = _numpy_multiarray()
        self._allowed = {
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): multiarray.scalar,
            ("numpy._core.multiarray", "scalar"): multiarray.scalar,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
            ("collections", "OrderedDict"): OrderedDict,
        }

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a Caffe2 weights file may only hold "
                "numpy arrays") from None


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    return multiarray


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` restricted to the latin-1 use of Python 2 byte strings."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r} in a weights file")
    return text.encode("latin1")


def _load_c2_pickled_weights(file_path):
    """Read the blob dict of a Detectron ``.pkl`` (plain, or under a ``"blobs"`` key)."""
    with open(file_path, "rb") as f:
        try:
            data = _NumpyOnlyUnpickler(f).load()
        except pickle.UnpicklingError as error:
            raise pickle.UnpicklingError(f"cannot load {file_path}: {error}") from None
    if not isinstance(data, dict):
        raise pickle.UnpicklingError(f"{file_path} holds a {type(data).__name__}, expected a "
                                     "dict of Caffe2 blobs")
    return data.get("blobs", data)


def _rename_conv_weights_for_deformable_conv_layers(state_dict, cfg):
    """Move ``layerN.*.conv2`` weights under ``conv2.conv`` for stages built with DCN.

    A deformable conv wraps the plain conv as ``conv2.conv`` next to its ``conv2.offset``
    predictor (which has no pre-trained weights).
    """
    dcn_stages = [stage for stage, with_dcn in
                  enumerate(cfg.MODEL.RESNETS.STAGE_WITH_DCN, 1) if with_dcn]
    if not dcn_stages:
        return state_dict
    logger.info("Remapping conv weights for deformable conv weights")
    pattern = re.compile(r"(.*layer(?:%s)\..*conv2)\.(weight|bias)$"
                         % "|".join(str(stage) for stage in dcn_stages))
    renamed = OrderedDict()
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match:
            new_key = f"{match.group(1)}.conv.{match.group(2)}"
            logger.info("old_key: %s, new_key: %s", key, new_key)
            key = new_key
        renamed[key] = value
    return renamed


C2_FORMAT_LOADER = Registry()


def load_resnet_c2_format(cfg, f):
    """Load a ResNet/ResNeXt ``.pkl`` as ``{"model": renamed state dict}``."""
    conv_body = cfg.MODEL.BACKBONE.CONV_BODY
    arch = re.sub(r"-(C4|C5|FPN-RETINANET|FPN)$", "", conv_body)
    state_dict = _load_c2_pickled_weights(f)
    state_dict = _rename_weights_for_resnet(state_dict, _C2_STAGE_NAMES[arch])
    state_dict = _rename_conv_weights_for_deformable_conv_layers(state_dict, cfg)
    return dict(model=state_dict)


for _conv_body in ("R-50-C4", "R-50-C5", "R-101-C4", "R-101-C5", "R-50-FPN",
                   "R-50-FPN-RETINANET", "R-101-FPN", "R-101-FPN-RETINANET", "R-152-FPN"):
    C2_FORMAT_LOADER.register(_conv_body, load_resnet_c2_format)


def load_c2_format(cfg, f):
    """Load the Detectron ``.pkl`` ``f`` for the backbone named by ``MODEL.BACKBONE.CONV_BODY``."""
    conv_body = cfg.MODEL.BACKBONE.CONV_BODY
    if conv_body not in C2_FORMAT_LOADER:
        raise ValueError(f"cannot load Caffe2 weights {f} into MODEL.BACKBONE.CONV_BODY "
                         f"{conv_body!r}: supported bodies are {sorted(C2_FORMAT_LOADER)}")
    return C2_FORMAT_LOADER[conv_body](cfg, f)
