"""Download-once cache for weight files named by URL."""
import logging
import os
import re
from urllib.parse import urlparse

import torch

from atss_core.utils.comm import is_main_process, synchronize

logger = logging.getLogger(__name__)

# torchvision-style file names end in "-<sha256 prefix>.<ext>".
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")


def default_cache_dir():
    """Where downloaded weights are kept: ``<torch hub dir>/checkpoints``.

    The hub dir is ``$TORCH_HOME/hub`` (``~/.cache/torch/hub`` by default).
    """
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def cached_file_name(url):
    """File name under which ``url`` is cached.

    Detectron's COCO models are all called ``model_final.pkl``, so for those the whole
    URL path (with "/" replaced by "_") is used to keep them apart.
    """
    parts = urlparse(url)
    filename = parts.fragment or os.path.basename(parts.path)
    if filename == "model_final.pkl":
        filename = parts.path.replace("/", "_")
    return filename


def cache_url(url, model_dir=None, progress=True):
    """Return the local path of ``url``, downloading it first if it is not cached yet.

    Only the main process downloads; the others wait for it. When the file name
    carries a hash prefix of at least 6 hex digits, the download is checked against it.

    Raises:
        FileNotFoundError: the file is not cached and cannot be downloaded (offline, say);
            the message names the file to fetch by hand and where to put it.
    """
    model_dir = model_dir or default_cache_dir()
    cached_file = os.path.join(model_dir, cached_file_name(url))
    try:
        if not os.path.exists(cached_file) and is_main_process():
            os.makedirs(model_dir, exist_ok=True)
            match = _HASH_IN_NAME.search(os.path.basename(cached_file))
            # Caffe2 names such as "R-50.pkl" yield a too-short "hash"; skip the check.
            hash_prefix = match.group(1) if match and len(match.group(1)) >= 6 else None
            logger.info("Downloading %s to %s", url, cached_file)
            try:
                torch.hub.download_url_to_file(url, cached_file, hash_prefix,
                                               progress=progress)
            except Exception as error:  # network errors come in many types
                raise FileNotFoundError(
                    f"could not download {url} ({type(error).__name__}: {error}); fetch it "
                    f"by hand and save it as {cached_file}") from None
    finally:
        # Release the waiting processes even when the download failed.
        synchronize()
    if not os.path.exists(cached_file):
        raise FileNotFoundError(f"{url} was not downloaded; fetch it by hand and save it as "
                                f"{cached_file}")
    return cached_file
