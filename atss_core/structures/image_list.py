"""``ImageList``: a batch of images of different sizes, zero-padded into one tensor."""
import math
from typing import List, Sequence, Tuple, Union

import torch


class ImageList:
    """Padded batch plus the size of each image before padding.

    Attributes:
        tensors: (B, C, H, W) tensor; image i occupies ``tensors[i, :, :h_i, :w_i]`` and
            the rest (bottom and right) is zero.
        image_sizes: list of B (h_i, w_i) pairs.
    """

    def __init__(self, tensors: torch.Tensor, image_sizes: List[Tuple[int, int]]):
        self.tensors = tensors
        self.image_sizes = image_sizes

    def to(self, *args, **kwargs) -> "ImageList":
        """Same batch with ``tensors.to(*args, **kwargs)`` (device and/or dtype)."""
        return ImageList(self.tensors.to(*args, **kwargs), self.image_sizes)


def _check_image(image, index):
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"to_image_list: image {index} must be a (C, H, W) tensor, got {shape}")


def to_image_list(tensors: Union["ImageList", torch.Tensor, Sequence[torch.Tensor]],
                  size_divisible: int = 0) -> ImageList:
    """Batch images into an :class:`ImageList`, zero-padding them at the bottom and right.

    Args:
        tensors: an ``ImageList`` (returned unchanged), a (C, H, W) or (B, C, H, W) tensor,
            or a list / tuple of (C, H, W) tensors of possibly different sizes.
        size_divisible: if > 0, the padded height and width are rounded up to multiples of it.

    Returns:
        ImageList whose ``tensors`` is (B, C, H_max, W_max) (rounded up as requested) and
        whose ``image_sizes`` are the (H, W) of the inputs.
    """
    if isinstance(tensors, ImageList):
        return tensors
    if isinstance(tensors, torch.Tensor):
        if tensors.dim() == 3:
            tensors = tensors[None]
        if tensors.dim() != 4:
            raise ValueError("to_image_list: a tensor must be (C, H, W) or (B, C, H, W), got "
                             f"{tuple(tensors.shape)}")
        if size_divisible <= 0:
            # Already one batch and no rounding needed: use it as it is, without a copy.
            return ImageList(tensors, [image.shape[-2:] for image in tensors])
        tensors = list(tensors.unbind(0))
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"to_image_list: unsupported input type {type(tensors).__name__}; "
                        "pass a tensor, a list of (C, H, W) tensors or an ImageList")
    if not tensors:
        raise ValueError("to_image_list: got an empty list of images")
    for index, image in enumerate(tensors):
        _check_image(image, index)

    # Largest extent along every dimension (channels included, as the original does).
    max_shape = [max(sizes) for sizes in zip(*(image.shape for image in tensors))]
    if size_divisible > 0:
        max_shape[1] = int(math.ceil(max_shape[1] / size_divisible) * size_divisible)
        max_shape[2] = int(math.ceil(max_shape[2] / size_divisible) * size_divisible)

    batched = tensors[0].new_zeros((len(tensors), *max_shape))
    # Indexed writes into the batch (not copy_ into iterated views) keep autograd working when
    # the images require grad: gradients flow back to every input image.
    for index, image in enumerate(tensors):
        batched[index, : image.shape[0], : image.shape[1], : image.shape[2]] = image
    return ImageList(batched, [image.shape[-2:] for image in tensors])
