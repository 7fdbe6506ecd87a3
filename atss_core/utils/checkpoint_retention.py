"""Bounded checkpoint folders: keep only the newest periodic ``model_XXXXXXX.pth`` files."""
import logging
import os
import re

PERIODIC_CHECKPOINT = re.compile(r"model_(\d{7})\.pth")

logger = logging.getLogger(__name__)


def remove_old_periodic_checkpoints(save_dir, keep, protected_file=""):
    """Delete all but the ``keep`` highest-numbered ``model_XXXXXXX.pth`` in ``save_dir``.

    ``model_final.pth``, ``model_best.pth`` and any other name never match, and
    ``protected_file`` (the file ``last_checkpoint`` names, which a resume needs) is kept even
    when it is older. ``keep`` 0 keeps everything. Returns the removed file names.
    """
    if keep <= 0 or not save_dir or not os.path.isdir(save_dir):
        return []
    periodic = sorted((int(match.group(1)), name) for name in os.listdir(save_dir)
                      if (match := PERIODIC_CHECKPOINT.fullmatch(name)))
    protected_name = os.path.basename(protected_file) if protected_file else None
    removed = []
    for _, name in periodic[:-keep]:
        if name == protected_name:
            continue
        os.remove(os.path.join(save_dir, name))
        removed.append(name)
    if removed:
        logger.info("Removed %s (SOLVER.CHECKPOINT_KEEP %d)", ", ".join(removed), keep)
    return removed
