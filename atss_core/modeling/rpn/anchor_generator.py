"""Anchor boxes for the ATSS head.

Each FPN level has a small set of *cell anchors* (A boxes around one grid cell), generated with
the legacy Detectron formula (below); the anchors of a level are the cell anchors shifted to
every cell of that level's feature map.
"""
from typing import List, Sequence, Tuple

import torch
from torch import nn

from atss_core.modeling.original_api import make_anchor_generator_atss  # noqa: F401 (original API import path)


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

    They depend on the feature-map sizes only (not on the images): ``forward`` returns one
    tensor per level, shared by all images of the batch, and keeps the last few results so a
    feature-map size seen before costs nothing.

    Args:
        sizes: per level, an anchor size or a tuple of sizes (pixels).
        aspect_ratios: height / width ratios, shared by all levels.
        anchor_strides: per level, the feature-map stride (pixels).
    """

    # Distinct (grid sizes, device, dtype) results kept; training with multi-scale inputs
    # cycles through a handful of sizes, evaluation of a data set through more.
    CACHE_SIZE = 16

    def __init__(self, sizes: Sequence = (128, 256, 512), aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 anchor_strides: Sequence[int] = (8, 16, 32)):
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
        self._cache = {}

    @classmethod
    def from_config(cls, cfg) -> "AnchorGenerator":
        """The ATSS anchor generator of ``cfg.MODEL.ATSS``.

        With ``SCALES_PER_OCTAVE`` k, every level gets the sizes ``size * OCTAVE ** (i / k)`` for
        i in 0..k-1 (times each aspect ratio). ``STRADDLE_THRESH`` is not read (nothing used the
        visibility it decided).
        """
        atss = cfg.MODEL.ATSS
        if len(atss.ANCHOR_STRIDES) != len(atss.ANCHOR_SIZES):
            raise ValueError(f"MODEL.ATSS.ANCHOR_SIZES has {len(atss.ANCHOR_SIZES)} entries but "
                             f"MODEL.ATSS.ANCHOR_STRIDES has {len(atss.ANCHOR_STRIDES)}; give one per FPN level")
        octave_sizes = tuple(
            tuple(atss.OCTAVE ** (i / float(atss.SCALES_PER_OCTAVE)) * size
                  for i in range(atss.SCALES_PER_OCTAVE))
            for size in atss.ANCHOR_SIZES
        )
        return cls(octave_sizes, atss.ASPECT_RATIOS, atss.ANCHOR_STRIDES)

    def num_anchors_per_location(self) -> List[int]:
        """Number of anchors A per grid cell, one entry per level."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    def grid_anchors(self, grid_sizes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
        """Anchors over whole feature grids (computed on every call; ``forward`` caches).

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

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Anchors of a batch's feature maps.

        Args:
            feature_maps: list over levels of Tensor (N, C, H_l, W_l).

        Returns:
            list over levels of Tensor (H_l * W_l * A, 4) xyxy over the whole padded grid, the
            same for every image (see ``grid_anchors``). Do not modify them in place: they are
            cached.
        """
        grid_sizes = tuple(tuple(feature_map.shape[-2:]) for feature_map in feature_maps)
        first = next(iter(self.cell_anchors))
        # Tensors made under inference_mode cannot be used by autograd later: keep them apart.
        key = (grid_sizes, first.device, first.dtype, torch.is_inference_mode_enabled())
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self.grid_anchors(grid_sizes)
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache[key] = anchors
        return list(anchors)

    def _load_from_state_dict(self, *args, **kwargs):
        # New cell anchors make every cached grid stale.
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)
