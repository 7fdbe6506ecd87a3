"""Box <-> regression-target coding used by the ATSS head, its loss and its post-processor.

Two parameterisations, chosen by ``MODEL.ATSS.REGRESSION_TYPE``:

* ``BOX``: the Faster R-CNN deltas ``(dx, dy, dw, dh)`` with weights (10, 10, 5, 5), relative to
  the anchor box. Widths use the legacy "+1" pixel convention (``w = x2 - x1 + 1``) and decoded
  boxes span ``ctr -/+ 0.5 * (w - 1)``; ``dw``/``dh`` are clamped at ``log(1000 / 16)`` before
  ``exp`` so a wild prediction cannot overflow.
* ``POINT``: distances ``(l, t, r, b)`` from the anchor centre to the box sides, divided by the
  anchor size ("+1" width) and multiplied by ``ANCHOR_SIZES[0] / ANCHOR_STRIDES[0]`` (8 with the
  default config, at every level because anchor size / stride is the same on every level). No clamp.

Every formula keeps the original's operation order, so results match it bit for bit.
"""
import math

import torch

# Faster R-CNN delta weights (dx, dy, dw, dh) for the BOX parameterisation.
BOX_DELTA_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# exp() of a larger dw/dh would blow a box up more than 1000/16 times its anchor.
BOX_DELTA_CLAMP = math.log(1000.0 / 16)
REGRESSION_TYPES = ("BOX", "POINT")


def _centres_and_sizes(boxes):
    """Centre x, centre y, width and height ("+1" convention) of ``boxes`` (N, 4) xyxy; each (N,)."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return (x2 + x1) / 2, (y2 + y1) / 2, x2 - x1 + 1, y2 - y1 + 1


class BoxCoder:
    """Encodes GT boxes as regression targets relative to anchors, and decodes predictions back.

    Args:
        regression_type: "BOX" or "POINT" (``MODEL.ATSS.REGRESSION_TYPE``).
        point_scale: POINT targets are in units of (anchor size / point_scale); the original
            uses ``ANCHOR_SIZES[0] / ANCHOR_STRIDES[0]`` (8 by default).
    """

    def __init__(self, regression_type: str = "BOX", point_scale: float = 8.0):
        if regression_type not in REGRESSION_TYPES:
            raise ValueError(f"MODEL.ATSS.REGRESSION_TYPE is {regression_type!r}; "
                             f"set it to one of {REGRESSION_TYPES}")
        self.regression_type = regression_type
        self.point_scale = point_scale

    @classmethod
    def from_config(cls, cfg) -> "BoxCoder":
        atss = cfg.MODEL.ATSS
        return cls(atss.REGRESSION_TYPE, atss.ANCHOR_SIZES[0] / atss.ANCHOR_STRIDES[0])

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Regression targets of ``gt_boxes`` (N, 4) xyxy w.r.t. ``anchors`` (N, 4) xyxy.

        Returns (N, 4): ``(dx, dy, dw, dh)`` for BOX, ``(l, t, r, b)`` for POINT.
        """
        anchor_cx, anchor_cy, anchor_w, anchor_h = _centres_and_sizes(anchors)
        if self.regression_type == "POINT":
            gt_x1, gt_y1, gt_x2, gt_y2 = gt_boxes.unbind(dim=1)
            scale = self.point_scale
            return torch.stack([scale * (anchor_cx - gt_x1) / anchor_w,
                                scale * (anchor_cy - gt_y1) / anchor_h,
                                scale * (gt_x2 - anchor_cx) / anchor_w,
                                scale * (gt_y2 - anchor_cy) / anchor_h], dim=1)
        gt_cx, gt_cy, gt_w, gt_h = _centres_and_sizes(gt_boxes)
        wx, wy, ww, wh = BOX_DELTA_WEIGHTS
        return torch.stack([wx * (gt_cx - anchor_cx) / anchor_w,
                            wy * (gt_cy - anchor_cy) / anchor_h,
                            ww * torch.log(gt_w / anchor_w),
                            wh * torch.log(gt_h / anchor_h)], dim=1)

    def decode(self, preds: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes (N, 4) xyxy from regression outputs ``preds`` (N, 4) relative to ``anchors`` (N, 4).

        The result has ``preds``' dtype (anchors are cast to it, as in the original).
        """
        anchors = anchors.to(preds.dtype)
        anchor_cx, anchor_cy, anchor_w, anchor_h = _centres_and_sizes(anchors)
        if self.regression_type == "POINT":
            left, top, right, bottom = (preds / self.point_scale).unbind(dim=1)
            return torch.stack([anchor_cx - left * anchor_w,
                                anchor_cy - top * anchor_h,
                                anchor_cx + right * anchor_w,
                                anchor_cy + bottom * anchor_h], dim=1)
        wx, wy, ww, wh = BOX_DELTA_WEIGHTS
        dx, dy, dw, dh = preds.unbind(dim=1)
        dw = torch.clamp(dw / ww, max=BOX_DELTA_CLAMP)
        dh = torch.clamp(dh / wh, max=BOX_DELTA_CLAMP)
        ctr_x = dx / wx * anchor_w + anchor_cx
        ctr_y = dy / wy * anchor_h + anchor_cy
        half_w = 0.5 * (torch.exp(dw) * anchor_w - 1)
        half_h = 0.5 * (torch.exp(dh) * anchor_h - 1)
        return torch.stack([ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h], dim=1)
