"""Anchor boxes for the ATSS head.

Each FPN level has a small set of *cell anchors* (A boxes around one grid cell), generated with
the legacy Detectron formula (below); the anchors of a level are the cell anchors shifted to
every cell of that level's feature map.
"""
import torch
from torch import nn

from atss_core.structures.bounding_box import BoxList


class BufferList(nn.Module):
    """An ``nn.ParameterList`` for buffers: buffers registered under the names "0", "1", ...

    They follow ``.to(device)`` and appear in the state dict (``cell_anchors.0`` ...).
    """

    def __init__(self, buffers=None):
        super().__init__()
        if buffers is not None:
            self.extend(buffers)

    def extend(self, buffers):
        offset = len(self)
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(offset + i), buffer)
        return self

    def __len__(self):
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


def generate_anchors(stride=16, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1, 2)):
    """Cell anchors of one level, in float64, with the legacy Detectron arithmetic.

    A ``stride`` x ``stride`` reference window centred at ``(stride / 2, stride / 2)`` is reshaped
    to each aspect ratio (height / width) keeping its area, with the width and height rounded to
    whole pixels (round-half-to-even, like ``np.round``), then scaled by ``size / stride``.
    Boxes use the "+1" convention: a box of width w spans ``ctr -/+ 0.5 * (w - 1)``.

    Args:
        stride (int): the level's stride in pixels.
        sizes (sequence of float): anchor sizes (square-root areas before rounding) in pixels.
        aspect_ratios (sequence of float): height / width ratios.

    Returns:
        Tensor (len(aspect_ratios) * len(sizes), 4) float64, xyxy, ratio-major: all sizes of the
        first ratio, then all sizes of the second ratio, ...
    """
    scales = torch.tensor(sizes, dtype=torch.float64) / stride
    ratios = torch.tensor(aspect_ratios, dtype=torch.float64)
    centre = stride / 2.0
    # Rounding happens at the ratio step only, before scaling (this is what makes e.g. a 50.8
    # size come out as it did in the original).
    ratio_widths = torch.round(torch.sqrt(float(stride * stride) / ratios))
    ratio_heights = torch.round(ratio_widths * ratios)
    widths = (ratio_widths[:, None] * scales[None, :]).reshape(-1)
    heights = (ratio_heights[:, None] * scales[None, :]).reshape(-1)
    half_w = 0.5 * (widths - 1)
    half_h = 0.5 * (heights - 1)
    return torch.stack([centre - half_w, centre - half_h, centre + half_w, centre + half_h], dim=1)


class AnchorGenerator(nn.Module):
    """Anchors over every level of a feature pyramid.

    Args:
        sizes (sequence): per level, an anchor size or a tuple of sizes (pixels).
        aspect_ratios (sequence of float): height / width ratios, shared by all levels.
        anchor_strides (sequence of int): per level, the feature-map stride (pixels).
        straddle_thresh (float): anchors reaching more than this many pixels outside the
            (unpadded) image get ``visibility`` False; a negative value marks all visible.
    """

    def __init__(self, sizes=(128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0),
                 anchor_strides=(8, 16, 32), straddle_thresh=0):
        super().__init__()
        if len(anchor_strides) != len(sizes):
            raise ValueError(f"got {len(sizes)} anchor sizes for {len(anchor_strides)} anchor strides; "
                             "give one size (or tuple of sizes) per FPN level")
        cell_anchors = [
            generate_anchors(stride, size if isinstance(size, (tuple, list)) else (size,),
                             aspect_ratios).float()
            for stride, size in zip(anchor_strides, sizes)
        ]
        self.strides = tuple(anchor_strides)
        self.cell_anchors = BufferList(cell_anchors)
        self.straddle_thresh = straddle_thresh

    def num_anchors_per_location(self):
        """Number of anchors A per grid cell, one entry per level."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    def grid_anchors(self, grid_sizes):
        """Anchors over whole feature grids.

        Args:
            grid_sizes: per level, the feature map's (height, width).

        Returns:
            list over levels of Tensor (height * width * A, 4) float32: cells in row-major
            (y, x) order, the A anchors of one cell consecutive.
        """
        anchors = []
        for (grid_height, grid_width), stride, cell_anchors in zip(
                grid_sizes, self.strides, self.cell_anchors):
            device = cell_anchors.device
            shifts_x = torch.arange(grid_width, dtype=torch.float32, device=device) * stride
            shifts_y = torch.arange(grid_height, dtype=torch.float32, device=device) * stride
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cell_anchors[None]).reshape(-1, 4))
        return anchors

    def add_visibility_to(self, boxlist):
        """Adds the bool field "visibility": the anchor lies inside the image (within the thresh)."""
        image_width, image_height = boxlist.size
        anchors = boxlist.bbox
        if self.straddle_thresh >= 0:
            slack = self.straddle_thresh
            visible = ((anchors[:, 0] >= -slack) & (anchors[:, 1] >= -slack)
                       & (anchors[:, 2] < image_width + slack) & (anchors[:, 3] < image_height + slack))
        else:
            visible = torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
        boxlist.add_field("visibility", visible)

    def forward(self, image_list, feature_maps):
        """Anchors for every image of a batch.

        Args:
            image_list: an ``ImageList``; only its ``image_sizes`` [(height, width)] are used.
            feature_maps: list over levels of Tensor (N, C, H_l, W_l).

        Returns:
            ``anchors[image][level]``: a ``BoxList`` (xyxy) over the whole padded grid of the
            level, with size = the image's unpadded (width, height) and a "visibility" field.
        """
        grid_sizes = [tuple(feature_map.shape[-2:]) for feature_map in feature_maps]
        anchors_per_level = self.grid_anchors(grid_sizes)
        anchors = []
        for image_height, image_width in image_list.image_sizes:
            anchors_in_image = []
            for level_anchors in anchors_per_level:
                boxlist = BoxList(level_anchors, (image_width, image_height), mode="xyxy")
                self.add_visibility_to(boxlist)
                anchors_in_image.append(boxlist)
            anchors.append(anchors_in_image)
        return anchors


def make_anchor_generator_atss(config):
    """The ATSS anchor generator from ``config.MODEL.ATSS``.

    With ``SCALES_PER_OCTAVE`` k, every level gets the sizes ``size * OCTAVE ** (i / k)`` for
    i in 0..k-1 (times each aspect ratio).
    """
    atss = config.MODEL.ATSS
    if len(atss.ANCHOR_STRIDES) != len(atss.ANCHOR_SIZES):
        raise ValueError(f"MODEL.ATSS.ANCHOR_SIZES has {len(atss.ANCHOR_SIZES)} entries but "
                         f"MODEL.ATSS.ANCHOR_STRIDES has {len(atss.ANCHOR_STRIDES)}; give one per FPN level")
    octave_sizes = tuple(
        tuple(atss.OCTAVE ** (i / float(atss.SCALES_PER_OCTAVE)) * size
              for i in range(atss.SCALES_PER_OCTAVE))
        for size in atss.ANCHOR_SIZES
    )
    return AnchorGenerator(octave_sizes, atss.ASPECT_RATIOS, atss.ANCHOR_STRIDES, atss.STRADDLE_THRESH)
