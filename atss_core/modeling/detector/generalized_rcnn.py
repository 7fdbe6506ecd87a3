"""``GeneralizedRCNN``: backbone (ResNet + FPN) followed by the dense ATSS head.

ATSS is a one-stage detector (``MODEL.RPN_ONLY``): the head's post-processed output is the final
detection list, and there are no ROI heads.
"""
from typing import Sequence, Tuple

import torch
from torch import nn

from atss_core.layers import use_onednn_convolutions
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import to_image_list

from ..backbone import build_backbone
from ..fuse import apply_frozen_bn_in_convs, fuse_frozen_bn
from ..rpn.atss.atss import ATSSModule

__all__ = ["GeneralizedRCNN", "check_targets"]


class GeneralizedRCNN(nn.Module):
    """Detector = ``backbone`` (Sequential(body, fpn)) + ``rpn`` (``ATSSModule``).

    ``forward(images, targets=None)``:
        images: a ``(3, H, W)`` or ``(N, 3, H, W)`` tensor, a list of ``(3, H_i, W_i)`` tensors, or
            an ``ImageList``; BGR 0-255 minus PIXEL_MEAN. Tensors and lists are zero-padded at the
            bottom/right to a multiple of ``DATALOADER.SIZE_DIVISIBILITY``; an ``ImageList`` is
            used as given.
        targets: training only, a list of ``BoxList`` (xyxy, field ``labels`` in 1..C, size =
            the unpadded image (W, H)), one per image.
    Training returns ``{"loss_cls", "loss_reg", "loss_centerness"}``; evaluation returns one
    ``BoxList`` per image with fields ``scores`` and ``labels``, in that image's unpadded
    coordinates.
    """

    def __init__(self, cfg):
        super().__init__()
        if not cfg.MODEL.RPN_ONLY:
            raise NotImplementedError(
                "MODEL.RPN_ONLY is False, but this project has no ROI heads (ATSS is one-stage): "
                "set MODEL.RPN_ONLY True, e.g. with a configs/atss/*.yaml file")
        if not cfg.MODEL.ATSS_ON:
            raise NotImplementedError(
                "MODEL.ATSS_ON is False, but the ATSS head is the only one implemented here "
                "(no RPN, FCOS or RetinaNet heads): set MODEL.ATSS_ON True, e.g. with a configs/atss/*.yaml file")
        self.size_divisibility = cfg.DATALOADER.SIZE_DIVISIBILITY
        self.num_classes = cfg.MODEL.ATSS.NUM_CLASSES  # background included
        self.backbone = build_backbone(cfg)
        self.rpn = ATSSModule.from_config(cfg, self.backbone.out_channels)
        # PyTorch's size heuristic would run small-batch 1x1 convs (one thread) and small maps
        # (batch 1) on its slow reference kernel; see atss_core/layers/onednn_conv.py.
        use_onednn_convolutions(self)
        # Each FrozenBatchNorm2d is folded into the conv before it at every forward: no pass of
        # its own over the activations in training or plain evaluation; same state dict.
        apply_frozen_bn_in_convs(self)
        # NHWC memory order for the conv weights and the input batch: same results, faster
        # oneDNN / cuDNN kernels (about 1.3x for the quick-start training step on CPU).
        self.channels_last = cfg.MODEL.CHANNELS_LAST
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        self.inference_only = False  # set by prepare_for_inference()

    def prepare_for_inference(self, channels_last=True):
        """Make evaluation faster, in place, and return the model (in eval mode).

        Folds every FrozenBatchNorm2d into the conv before it (``fuse_frozen_bn``) and, with
        ``channels_last``, stores conv weights and feeds images in NHWC memory order, which the
        oneDNN (CPU) and cuDNN kernels run faster. Results stay within the golden tolerances.
        Call it after loading weights: the state dict changes (norm keys are gone, convs gain
        biases), and the model can no longer be trained.
        """
        self.eval()
        fuse_frozen_bn(self)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.inference_only = True
        return self

    def forward(self, images, targets=None):
        if self.training and self.inference_only:
            raise RuntimeError("this model went through prepare_for_inference() (frozen norms folded into "
                               "the convs), so it cannot be trained: train a freshly built model instead")
        if self.training and targets is None:
            raise ValueError("GeneralizedRCNN in training mode needs targets (a list of BoxList, one per "
                             "image): pass them, or call model.eval() to get detections")
        images = to_image_list(images, self.size_divisibility)
        if targets is not None:
            check_targets(targets, images.image_sizes, self.num_classes)
        batch = images.tensors
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.backbone(batch)
        detections, losses = self.rpn(images, features, targets)
        return losses if self.training else detections


def check_targets(targets: Sequence[BoxList], image_sizes: Sequence[Tuple[int, int]], num_classes: int) -> None:
    """Raises one clear error for targets the model cannot train on.

    targets: one BoxList per image, sized as the unpadded image (W, H) of ``image_sizes`` (N (H, W)
    pairs), with an int64 field "labels" (G_i,) in 1..num_classes - 1 (``num_classes`` counts the
    background, as ``MODEL.ATSS.NUM_CLASSES``).
    """
    if len(targets) != len(image_sizes):
        raise ValueError(f"got {len(targets)} targets for {len(image_sizes)} images: pass one BoxList per image")
    for index, target in enumerate(targets):
        if not isinstance(target, BoxList) or not target.has_field("labels"):
            got = type(target).__name__ if not isinstance(target, BoxList) else "a BoxList without 'labels'"
            raise TypeError(f"target {index} is {got}; targets must be BoxLists (xyxy, size = the unpadded "
                            "image (W, H)) with a 'labels' field: for a {'boxes', 'labels'} dict use "
                            "BoxList(boxes, (W, H)) and .add_field('labels', labels)")
        image_size_wh = (int(image_sizes[index][1]), int(image_sizes[index][0]))
        if tuple(target.size) != image_size_wh:
            raise ValueError(f"target {index} has BoxList size {tuple(target.size)} but its image's unpadded "
                             f"(width, height) is {image_size_wh}; build targets with the unpadded image size")
        labels = target.get_field("labels")
        outside = (labels < 1) | (labels > num_classes - 1)
        if outside.any():
            raise ValueError(f"target {index} has label {int(labels[outside][0])}; labels must be class ids "
                             f"1..{num_classes - 1} (MODEL.ATSS.NUM_CLASSES {num_classes} counts the background "
                             "as 0): fix the data's category ids or raise MODEL.ATSS.NUM_CLASSES")
