"""``BoxList``: the boxes of one image, with per-box fields such as labels and scores.

Pixel convention (kept from the original for identical numerics): a box ``xyxy`` covers
pixels ``x1..x2`` inclusive, so its width is ``x2 - x1 + 1``. This "+1" is used by
:meth:`BoxList.area`, :meth:`BoxList.convert` to and from ``xywh``, the left-right flip
(``x' = W - x - 1``) and :meth:`BoxList.clip_to_image` (to ``W - 1``, ``H - 1``).
"""
from operator import methodcaller

import torch

# Methods of BoxList.transpose (same values as PIL.Image.FLIP_LEFT_RIGHT / FLIP_TOP_BOTTOM).
FLIP_LEFT_RIGHT = 0
FLIP_TOP_BOTTOM = 1

_MODES = ("xyxy", "xywh")

# Width of a one-pixel box under the inclusive pixel convention.
_TO_REMOVE = 1


def _check_mode(mode):
    if mode not in _MODES:
        raise ValueError(f"box mode must be 'xyxy' or 'xywh', got {mode!r}")


class BoxList:
    """A set of boxes of one image, as an (N, 4) float32 tensor, plus per-box fields.

    Attributes:
        bbox: (N, 4) float32 tensor, in ``mode`` layout.
        size: (image_width, image_height) of the image the boxes belong to.
        mode: ``"xyxy"`` (corners) or ``"xywh"`` (top-left corner, width, height).
        extra_fields: field name -> per-box data whose first dimension is N (a tensor, or
            an object with ``resize`` / ``transpose`` / ``crop`` / ``to`` / indexing).
    """

    def __init__(self, bbox, image_size, mode="xyxy"):
        """
        Args:
            bbox: (N, 4) tensor or nested sequence; converted to float32 on its device. An
                empty 1-D input (``[]``) gives N = 0.
            image_size: (width, height) of the image.
            mode: ``"xyxy"`` or ``"xywh"``.
        """
        device = bbox.device if isinstance(bbox, torch.Tensor) else torch.device("cpu")
        bbox = torch.as_tensor(bbox, dtype=torch.float32, device=device)
        if bbox.dim() == 1 and bbox.numel() == 0:
            bbox = bbox.reshape(0, 4)
        if bbox.dim() != 2 or bbox.shape[-1] != 4:
            raise ValueError(f"BoxList boxes must have shape (N, 4), got {tuple(bbox.shape)}")
        _check_mode(mode)
        if not hasattr(image_size, "__len__") or len(image_size) != 2:
            raise ValueError(f"BoxList image_size must be (width, height), got {image_size!r}")

        self.bbox = bbox
        self.size = tuple(image_size)
        self.mode = mode
        self.extra_fields = {}

    # ------------------------------------------------------------------ fields
    def add_field(self, field, field_data):
        self.extra_fields[field] = field_data

    def get_field(self, field):
        try:
            return self.extra_fields[field]
        except KeyError:
            raise KeyError(f"BoxList has no field '{field}'; it has {self.fields()}") from None

    def has_field(self, field):
        return field in self.extra_fields

    def fields(self):
        return list(self.extra_fields.keys())

    def _with_boxes(self, bbox, size, mode, field_op=None):
        """New BoxList over ``bbox`` carrying this one's fields.

        ``field_op(value)`` transforms fields that are not tensors (masks and other
        geometric structures); tensor fields are shared as they are.
        """
        boxlist = BoxList(bbox, size, mode)
        for name, value in self.extra_fields.items():
            if field_op is not None and not isinstance(value, torch.Tensor):
                value = field_op(value)
            boxlist.add_field(name, value)
        return boxlist

    # ----------------------------------------------------------------- layout
    def convert(self, mode):
        """This BoxList in ``mode`` (``self`` when it is already in that mode)."""
        _check_mode(mode)
        if mode == self.mode:
            return self
        x1, y1, x2, y2 = self._split_into_xyxy()
        if mode == "xyxy":
            bbox = torch.cat((x1, y1, x2, y2), dim=-1)
        else:
            bbox = torch.cat((x1, y1, x2 - x1 + _TO_REMOVE, y2 - y1 + _TO_REMOVE), dim=-1)
        return self._with_boxes(bbox, self.size, mode)

    def _split_into_xyxy(self):
        """Corner coordinates x1, y1, x2, y2, each (N, 1)."""
        if self.mode == "xyxy":
            return self.bbox.split(1, dim=-1)
        x1, y1, w, h = self.bbox.split(1, dim=-1)
        # A width below one pixel maps to a zero-extent box, never to x2 < x1.
        return (x1, y1,
                x1 + (w - _TO_REMOVE).clamp(min=0),
                y1 + (h - _TO_REMOVE).clamp(min=0))

    # -------------------------------------------------------------- geometry
    def resize(self, size, *args, **kwargs):
        """Boxes scaled to an image resized to ``size`` = (width, height).

        Extra arguments are passed to the ``resize`` of non-tensor fields.
        """
        ratio_w, ratio_h = (float(new) / float(old) for new, old in zip(size, self.size))
        field_op = methodcaller("resize", size, *args, **kwargs)
        if ratio_w == ratio_h:
            # Uniform scale: valid in either mode, so skip the conversion round trip.
            return self._with_boxes(self.bbox * ratio_w, size, self.mode, field_op)
        x1, y1, x2, y2 = self._split_into_xyxy()
        bbox = torch.cat((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=-1)
        return self._with_boxes(bbox, size, "xyxy", field_op).convert(self.mode)

    def transpose(self, method):
        """Boxes of the flipped image: ``FLIP_LEFT_RIGHT`` or ``FLIP_TOP_BOTTOM``.

        As in the original, the left-right flip maps x to ``W - x - 1`` while the top-bottom
        flip maps y to ``H - y`` (no pixel offset).
        """
        if method not in (FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM):
            raise NotImplementedError(
                f"BoxList.transpose supports FLIP_LEFT_RIGHT ({FLIP_LEFT_RIGHT}) and "
                f"FLIP_TOP_BOTTOM ({FLIP_TOP_BOTTOM}) only, got {method!r}")
        image_width, image_height = self.size
        x1, y1, x2, y2 = self._split_into_xyxy()
        if method == FLIP_LEFT_RIGHT:
            bbox = torch.cat((image_width - x2 - _TO_REMOVE, y1,
                              image_width - x1 - _TO_REMOVE, y2), dim=-1)
        else:
            bbox = torch.cat((x1, image_height - y2, x2, image_height - y1), dim=-1)
        field_op = methodcaller("transpose", method)
        return self._with_boxes(bbox, self.size, "xyxy", field_op).convert(self.mode)

    def crop(self, box):
        """Boxes relative to the region ``box`` = (left, top, right, bottom).

        Coordinates are shifted to the region's origin and clamped to [0, right - left] x
        [0, bottom - top]; boxes outside the region become empty but are kept. The result's
        size is (right - left, bottom - top).
        """
        x1, y1, x2, y2 = self._split_into_xyxy()
        width, height = box[2] - box[0], box[3] - box[1]
        bbox = torch.cat(((x1 - box[0]).clamp(min=0, max=width),
                          (y1 - box[1]).clamp(min=0, max=height),
                          (x2 - box[0]).clamp(min=0, max=width),
                          (y2 - box[1]).clamp(min=0, max=height)), dim=-1)
        field_op = methodcaller("crop", box)
        return self._with_boxes(bbox, (width, height), "xyxy", field_op).convert(self.mode)

    def clip_to_image(self, remove_empty=True):
        """Clamp the boxes to [0, W - 1] x [0, H - 1].

        In ``xyxy`` mode the clamp is done in place on ``self.bbox`` (as in the original).
        With ``remove_empty``, returns only the boxes with x2 > x1 and y2 > y1 afterwards;
        otherwise returns ``self``.
        """
        xyxy = self.convert("xyxy")
        max_x = self.size[0] - _TO_REMOVE
        max_y = self.size[1] - _TO_REMOVE
        xyxy.bbox[:, 0::2].clamp_(min=0, max=max_x)
        xyxy.bbox[:, 1::2].clamp_(min=0, max=max_y)
        if xyxy is not self:
            self.bbox = xyxy.convert(self.mode).bbox
        if remove_empty:
            box = xyxy.bbox
            return self[(box[:, 3] > box[:, 1]) & (box[:, 2] > box[:, 0])]
        return self

    def area(self):
        """(N,) areas, counting pixels inclusively: (x2 - x1 + 1) * (y2 - y1 + 1)."""
        box = self.bbox
        if self.mode == "xywh":
            return box[:, 2] * box[:, 3]
        return (box[:, 2] - box[:, 0] + _TO_REMOVE) * (box[:, 3] - box[:, 1] + _TO_REMOVE)

    # ----------------------------------------------------------- tensor-like
    def to(self, device):
        boxlist = BoxList(self.bbox.to(device), self.size, self.mode)
        for name, value in self.extra_fields.items():
            boxlist.add_field(name, value.to(device) if hasattr(value, "to") else value)
        return boxlist

    def __getitem__(self, item):
        """Select boxes (and the same entries of every field) by index, slice or bool mask."""
        boxlist = BoxList(self.bbox[item], self.size, self.mode)
        for name, value in self.extra_fields.items():
            boxlist.add_field(name, value[item])
        return boxlist

    def __len__(self):
        return self.bbox.shape[0]

    def copy_with_fields(self, fields):
        """A BoxList on the same boxes carrying only ``fields`` (a name or a list of names)."""
        boxlist = BoxList(self.bbox, self.size, self.mode)
        if not isinstance(fields, (list, tuple)):
            fields = [fields]
        for field in fields:
            boxlist.add_field(field, self.get_field(field))
        return boxlist

    def __repr__(self):
        return (f"{self.__class__.__name__}(num_boxes={len(self)}, "
                f"image_width={self.size[0]}, image_height={self.size[1]}, mode={self.mode})")
