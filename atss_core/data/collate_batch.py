"""Collate functions that turn a list of dataset samples into a batch."""
from atss_core.structures.image_list import to_image_list


class BatchCollator:
    """``[(image (3,H_i,W_i), target, index), ...]`` → ``(ImageList, targets, indices)``.

    The images are zero-padded at the bottom/right to a common size that is a multiple of
    ``size_divisible`` (when > 0); ``ImageList.image_sizes`` keeps each unpadded ``(H_i, W_i)``.
    ``targets`` and ``indices`` are tuples in batch order.
    """

    def __init__(self, size_divisible=0):
        self.size_divisible = size_divisible

    def __call__(self, batch):
        images, targets, indices = zip(*batch)
        return to_image_list(images, self.size_divisible), targets, indices


class BBoxAugCollator:
    """Collator for test-time augmentation: images stay separate (``im_detect_bbox_aug`` batches
    them itself per augmentation), returned as ``[images, targets, indices]`` tuples."""

    def __call__(self, batch):
        return list(zip(*batch))
