"""Paired image/target transforms of the training and test pipelines.

Every transform takes a PIL image (or, after ``ToTensor``, a ``(3, H, W)`` float tensor) and an
optional target ``BoxList`` whose ``size`` is the image's ``(W, H)``, and returns both. Called
without a target (test-time augmentation, demos) they return the image alone.
"""
import contextlib
import random

from torchvision.transforms import functional as F

from atss_core.structures.bounding_box import FLIP_LEFT_RIGHT


@contextlib.contextmanager
def seeded_random(seed):
    """Run the block with Python's ``random`` (which the random transforms draw from) seeded by
    ``seed``, restoring the previous state afterwards; ``seed=None`` leaves it untouched."""
    if seed is None:
        yield
        return
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


class Compose:
    """Apply ``transforms`` in order to an ``(image, target)`` pair."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target=None):
        for transform in self.transforms:
            if target is None:
                image = transform(image)
            else:
                image, target = transform(image, target)
        return image if target is None else (image, target)

    def __repr__(self):
        body = "".join(f"\n    {t}" for t in self.transforms)
        return f"{type(self).__name__}({body}\n)"


class Resize:
    """Scale the shorter image side to ``min_size`` while keeping the longer side ≤ ``max_size``.

    ``min_size`` is an int or a sequence of candidates; training picks one at random per image
    (multi-scale training). The output size is truncated with ``int()``, as the original does.
    Images are resized to ``clamped_size``, which never has a 0 px side.
    """

    def __init__(self, min_size, max_size):
        self.min_size = tuple(min_size) if isinstance(min_size, (list, tuple, range)) else (min_size,)
        self.max_size = max_size

    def get_size(self, image_size):
        """Output ``(height, width)`` for an input of ``image_size = (width, height)``."""
        width, height = image_size
        short_target = random.choice(self.min_size)
        if self.max_size is not None:
            short_side, long_side = float(min(width, height)), float(max(width, height))
            if long_side / short_side * short_target > self.max_size:
                # Shrink the short side so the long one lands on max_size (rounded, so the long
                # side can still exceed max_size by a pixel or two, as in the original).
                short_target = int(round(self.max_size * short_side / long_side))
        if (width <= height and width == short_target) or (height <= width and height == short_target):
            return height, width
        if width < height:
            return int(short_target * height / width), short_target
        return short_target, int(short_target * width / height)

    def clamped_size(self, image_size):
        """``get_size`` without 0 px sides.

        ``get_size`` keeps the original's result, which is 0 x 0 for an image more than about
        ``2 * max_size`` times longer than wide (1 x 5000 with max_size 1333); such an image gets a
        1 px short side and a ``max_size`` long side instead (stretched across the short side).
        """
        height, width = self.get_size(image_size)
        if height >= 1 and width >= 1:
            return height, width
        image_width, image_height = image_size
        return (self.max_size, 1) if image_width < image_height else (1, self.max_size)

    def __call__(self, image, target=None):
        image = F.resize(image, self.clamped_size(image.size))
        if target is None:
            return image
        return image, target.resize(image.size)

    def __repr__(self):
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror image and boxes left-right with probability ``prob``."""

    def __init__(self, prob=0.5):
        self.prob = prob

    def __call__(self, image, target=None):
        if random.random() < self.prob:
            image = F.hflip(image)
            if target is not None:
                target = target.transpose(FLIP_LEFT_RIGHT)
        return image if target is None else (image, target)

    def __repr__(self):
        return f"{type(self).__name__}(prob={self.prob})"


class ToTensor:
    """PIL RGB image → ``(3, H, W)`` float tensor in [0, 1]."""

    def __call__(self, image, target=None):
        image = F.to_tensor(image)
        return image if target is None else (image, target)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Normalize:
    """Subtract ``mean`` and divide by ``std`` per channel.

    With ``to_bgr255`` the RGB [0, 1] tensor is first turned into BGR [0, 255], the input
    convention of the Caffe2/Detectron ImageNet weights.
    """

    def __init__(self, mean, std, to_bgr255=True):
        self.mean = list(mean)
        self.std = list(std)
        self.to_bgr255 = to_bgr255

    def __call__(self, image, target=None):
        if self.to_bgr255:
            image = image[[2, 1, 0]] * 255
        image = F.normalize(image, mean=self.mean, std=self.std)
        return image if target is None else (image, target)

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean}, std={self.std}, to_bgr255={self.to_bgr255})"
