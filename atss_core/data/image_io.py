"""The one image reader of training, evaluation (with and without test-time augmentation) and the demo.

Every image becomes 8-bit RGB the same way wherever it is read:

* the EXIF orientation tag is applied, so the image is upright as viewers show it (detectron2 and
  OpenCV's ``imread`` do the same). A caller that knows the size the annotations were made on may
  pass it as ``annotated_size``: when only the stored, unrotated pixels have that size (the json was
  written by a tool that ignores EXIF, and the tag turns the image by 90 degrees), the stored pixels
  are used, so the boxes stay on the objects. Orientations that keep the size (flips, 180 degrees)
  cannot be told apart this way and are always applied.
* 16-bit images keep their high byte (0..65535 -> 0..255), as Pillow does for 16-bit RGB and
  OpenCV for every 16-bit image; ``convert("RGB")`` would clip them to white.
* grayscale, palette (also with transparency), LA, RGBA and CMYK images are converted to RGB;
  an alpha channel is dropped.

Missing files, folders, undecodable or truncated files and images over Pillow's decompression-bomb
limit raise :class:`DataError` naming the file.
"""
import logging

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

__all__ = ["read_image", "read_image_bgr"]

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION_TAG = 0x0112
_warned_unrotated = set()  # files already reported as read without their EXIF rotation
# "I" (32-bit integers) is how older Pillows open 16-bit PNGs; its values are clipped to 16 bits.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(image):
    """``image`` (loaded, any mode) as 8-bit RGB; an RGB image is returned as it is."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        high_byte = (np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(high_byte, "L").convert("RGB")
    if image.mode == "P":
        # Through RGBA: Pillow warns when a palette with transparency goes straight to RGB.
        image = image.convert("RGBA")
    return image.convert("RGB")


def read_image(path, annotated_size=None):
    """The image at ``path`` as an upright 8-bit RGB PIL image (see the module docstring).

    Args:
        path: image file.
        annotated_size: ``(width, height)`` the annotations of this image were made on, or None.
    Raises:
        DataError: the file is missing, a folder, not a decodable image, truncated, or larger than
            ``PIL.Image.MAX_IMAGE_PIXELS`` allows.
    """
    try:
        with Image.open(path) as stored:
            stored.load()
            orientation = stored.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            upright = ImageOps.exif_transpose(stored) if orientation != 1 else stored
            if annotated_size is not None and upright.size != tuple(annotated_size) \
                    and stored.size == tuple(annotated_size):
                if path not in _warned_unrotated:
                    _warned_unrotated.add(path)
                    logger.warning("image %s has EXIF orientation %d, but its annotations give the "
                                   "stored size %dx%d; using the stored pixels, not the rotated image",
                                   path, orientation, *stored.size)
                upright = stored
            return _to_rgb(upright)
    except FileNotFoundError:
        raise DataError(f"image file {path} not found; check the image folder and file name") from None
    except IsADirectoryError:
        raise DataError(f"image path {path} is a folder, not an image file") from None
    except Image.DecompressionBombError as error:
        raise DataError(f"image file {path} is too large for Pillow ({error}); shrink the image, or "
                        "raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's errors for corrupt files
        raise DataError(f"cannot read image file {path} ({error}); replace the file or remove it "
                        "from the input") from None


def read_image_bgr(path):
    """``read_image(path)`` as an (H, W, 3) uint8 BGR array, the layout OpenCV and the demo use."""
    return np.ascontiguousarray(np.asarray(read_image(path))[:, :, ::-1])
