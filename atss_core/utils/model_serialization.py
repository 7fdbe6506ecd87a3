"""Copy weights from a loaded state dict into a model whose key names may differ.

Pre-trained files rarely use the model's exact names: ImageNet weights lack the
``backbone.body.`` nesting, and checkpoints saved from DistributedDataParallel carry a
``module.`` prefix. Each model key is therefore matched to the loaded key that is its
longest (string) suffix, which is the rule of the original implementation.
"""
import logging
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)


def _longest_suffix_match(model_key, loaded_keys):
    """The longest key of ``loaded_keys`` (a set) that ``model_key`` ends with, or None.

    Scanning the start positions of ``model_key`` from the left finds the longest
    suffix first; this costs O(len(model_key)) set look-ups instead of comparing
    against every loaded key.
    """
    for start in range(len(model_key)):
        candidate = model_key[start:]
        if candidate in loaded_keys:
            return candidate
    return None


def _some(names, limit=5):
    """``names`` joined by ", ", at most ``limit`` of them followed by how many more there are."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def align_and_update_state_dicts(model_state_dict, loaded_state_dict, allow_shape_mismatch=True,
                                 source="the loaded weights"):
    """Overwrite entries of ``model_state_dict`` (in place) with matching loaded tensors.

    A model key takes the loaded tensor whose key is its longest suffix: for example
    ``backbone.body.layer1.0.conv1.weight`` takes ``layer1.0.conv1.weight`` rather than
    ``conv1.weight``. Matches whose shape differs from the model's (a head trained for
    another number of classes, say) are skipped, so fine-tuning from weights of another
    dataset works. Model keys without a match keep their current values.

    One line sums it up ("loaded N of M keys from ``source``; skipped: ..."), a warning when
    shapes did not fit; the key-by-key list is logged at DEBUG.

    Args:
        model_state_dict (dict[str, Tensor]): the model's ``state_dict()``; updated.
        loaded_state_dict (dict[str, Tensor]): tensors read from a weights file.
        allow_shape_mismatch (bool): False for evaluation and resuming, where a skipped or
            missing tensor would silently give a half-random model: then every model key
            must get a tensor of its shape from the file, or ValueError is raised.
        source (str): where the tensors come from (the file name), for the log.
    """
    # Entries that are not tensors (a random dict, say) can match no model weight.
    loaded_keys = {key for key, value in loaded_state_dict.items() if isinstance(value, torch.Tensor)}
    model_keys = sorted(model_state_dict)
    width = max((len(key) for key in model_keys), default=1)
    loaded_width = max((len(key) for key in loaded_keys), default=1)

    shape_mismatches = []
    missing_keys = []
    num_loaded = 0
    for model_key in model_keys:
        loaded_key = _longest_suffix_match(model_key, loaded_keys)
        if loaded_key is None:
            missing_keys.append(model_key)
            continue
        loaded_tensor = loaded_state_dict[loaded_key]
        model_shape = tuple(model_state_dict[model_key].shape)
        if tuple(loaded_tensor.shape) != model_shape:
            shape_mismatches.append(f"{model_key} {model_shape} <- {loaded_key} "
                                    f"{tuple(loaded_tensor.shape)}")
            continue
        model_state_dict[model_key] = loaded_tensor
        num_loaded += 1
        logger.debug("%-*s loaded from %-*s of shape %s", width, model_key, loaded_width,
                     loaded_key, tuple(loaded_tensor.shape))

    if shape_mismatches and not allow_shape_mismatch:
        raise ValueError(f"{len(shape_mismatches)} weights do not fit the model, e.g. {shape_mismatches[0]}; "
                         "use the config the weights were trained with (fine-tuning with "
                         "tools/train_net.py skips such weights instead)")
    if missing_keys and not allow_shape_mismatch:
        raise ValueError(f"{len(missing_keys)} of the model's {len(model_keys)} weights are not in the file, "
                         f"e.g. {missing_keys[0]}; pass weights trained for this model and config "
                         "(fine-tuning with tools/train_net.py keeps such weights at their initial values)")
    skipped = []
    if shape_mismatches:
        skipped.append(f"{len(shape_mismatches)} whose shape does not fit the model (they keep "
                       f"their initial values, e.g. a head for another NUM_CLASSES): "
                       + "; ".join(shape_mismatches))
    if missing_keys:
        skipped.append(f"{len(missing_keys)} model keys not in the file keep their current values "
                       f"({_some(missing_keys)})")
    logger.log(logging.WARNING if shape_mismatches else logging.INFO,
               "loaded %d of %d keys from %s; skipped: %s", num_loaded, len(model_keys), source,
               "; ".join(skipped) or "none")


def strip_prefix_if_present(state_dict, prefix):
    """Remove ``prefix`` from every key, but only when all keys start with it."""
    if not all(key.startswith(prefix) for key in state_dict):
        return state_dict
    return OrderedDict((key[len(prefix):], value) for key, value in state_dict.items())


def load_state_dict(model, loaded_state_dict, allow_shape_mismatch=True, source="the loaded weights"):
    """Load ``loaded_state_dict`` into ``model`` with suffix matching (see above).

    A ``module.`` prefix from a DistributedDataParallel-wrapped model is removed first.
    The final ``model.load_state_dict`` is strict, so a model key can never be left out.
    """
    model_state_dict = model.state_dict()
    loaded_state_dict = strip_prefix_if_present(loaded_state_dict, prefix="module.")
    align_and_update_state_dicts(model_state_dict, loaded_state_dict, allow_shape_mismatch, source)
    model.load_state_dict(model_state_dict)
