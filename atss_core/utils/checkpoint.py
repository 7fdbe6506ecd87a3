"""Saving and loading training state (model, optimizer, scheduler, grad scaler, iteration).

Files are written atomically: a checkpoint is written to a temporary file in the same
folder, flushed to disk and renamed into place, and only then is ``last_checkpoint``
(itself replaced atomically) pointed at it. A crash at any moment therefore leaves
``last_checkpoint`` naming a complete file.
"""
import logging
import os
import pickle

import torch

from atss_core.utils.c2_model_loading import load_c2_format
from atss_core.utils.imports import import_file
from atss_core.utils.model_serialization import load_state_dict
from atss_core.utils.model_zoo import cache_url

LAST_CHECKPOINT = "last_checkpoint"


def _atomic_write(path, write_fn):
    """Write ``path`` via ``write_fn(file)`` into a temporary file, then rename it into place."""
    folder, name = os.path.split(path)
    # A hidden name in the same folder (os.replace must not cross file systems), unique
    # per process; plain open() so the file gets the usual umask permissions.
    tmp_path = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp_path, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    # Persist the rename itself, so that after a power loss a later rename (of
    # last_checkpoint) cannot survive while this one is lost.
    folder_fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


class Checkpointer:
    """Saves and restores training state in ``save_dir``.

    Args:
        model (nn.Module): possibly wrapped in DistributedDataParallel (its keys then
            start with ``module.``, like the original's published checkpoints).
        optimizer, scheduler: saved and restored when given.
        save_dir (str): folder for ``<name>.pth`` and ``last_checkpoint``; "" disables saving.
        save_to_disk (bool): False on non-main processes, which then never write.
        logger (logging.Logger): defaults to this module's logger.
        scaler (torch.amp.GradScaler): mixed-precision loss scaler; its state is saved and
            restored when it is enabled.
    """

    def __init__(self, model, optimizer=None, scheduler=None, save_dir="", save_to_disk=None,
                 logger=None, scaler=None):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.logger = logger or logging.getLogger(__name__)

    def save(self, name, **kwargs):
        """Write ``<save_dir>/<name>.pth`` with the state plus ``kwargs`` (e.g. iteration)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None and self.scaler.is_enabled():
            data["scaler"] = self.scaler.state_dict()
        data.update(kwargs)

        os.makedirs(self.save_dir, exist_ok=True)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", save_file)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(save_file)

    def load(self, f=None, allow_shape_mismatch=True):
        """Restore state and return the checkpoint's other entries (e.g. ``iteration``).

        When ``save_dir`` has a ``last_checkpoint``, training resumes from it: model,
        optimizer, scheduler and scaler are all restored and ``f`` is ignored. Otherwise
        ``f`` (typically MODEL.WEIGHT) only initialises the model weights, so fine-tuning
        from a published checkpoint starts a fresh schedule at iteration 0. Weights whose
        shape does not fit are skipped with a warning, or, with ``allow_shape_mismatch=False``
        (evaluation, demos), raise ValueError.

        Raises:
            FileNotFoundError: ``f`` or the file named in ``last_checkpoint`` is missing.
            pickle.UnpicklingError: the file holds more than tensors and plain data.
        """
        last_saved = self.get_checkpoint_file() if self.has_checkpoint() else ""
        resuming = bool(last_saved)
        if resuming:
            f = last_saved
        if not f:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        self.logger.info("Loading checkpoint from %s", f)
        checkpoint = self._load_file(f)
        self._load_model(checkpoint, allow_shape_mismatch)
        if not resuming:
            return {}
        for key, target in (("optimizer", self.optimizer), ("scheduler", self.scheduler),
                            ("scaler", self.scaler)):
            state = checkpoint.pop(key, None)
            if state is None or target is None:
                continue
            if key == "scaler" and not target.is_enabled():
                continue
            self.logger.info("Loading %s from %s", key, f)
            target.load_state_dict(state)
        return checkpoint

    def has_checkpoint(self):
        return bool(self.save_dir) and os.path.exists(
            os.path.join(self.save_dir, LAST_CHECKPOINT))

    def get_checkpoint_file(self):
        """Path named in ``last_checkpoint``.

        The file records the path as saved; if the output folder was moved since, the
        same file name inside ``save_dir`` is used.
        """
        tag_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        try:
            with open(tag_file) as f:
                last_saved = f.read().strip()
        except FileNotFoundError:  # removed by another process in the meantime
            return ""
        moved = os.path.join(self.save_dir, os.path.basename(last_saved))
        if last_saved and not os.path.exists(last_saved) and os.path.exists(moved):
            return moved
        return last_saved

    def tag_last_checkpoint(self, last_filename):
        tag_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        _atomic_write(tag_file, lambda f: f.write(last_filename.encode("utf-8")))

    def _load_file(self, f):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"weights file {f} does not exist: check MODEL.WEIGHT "
                                    f"(or {LAST_CHECKPOINT} in the output folder)")
        try:
            # weights_only: a checkpoint may hold tensors and plain data, never code.
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as error:
            first_line = str(error).strip().splitlines()[0]
            raise pickle.UnpicklingError(
                f"refusing to load {f}: it holds objects other than tensors and plain data "
                f"({first_line})") from None

    def _load_model(self, checkpoint, allow_shape_mismatch=True):
        load_state_dict(self.model, checkpoint.pop("model"), allow_shape_mismatch)


class DetectronCheckpointer(Checkpointer):
    """Checkpointer that also understands ``catalog://`` names, URLs and Detectron ``.pkl``.

    ``cfg`` supplies PATHS_CATALOG (for ``catalog://``) and the backbone settings needed
    to rename Caffe2 blobs.
    """

    def __init__(self, cfg, model, optimizer=None, scheduler=None, save_dir="",
                 save_to_disk=None, logger=None, scaler=None):
        super().__init__(model, optimizer, scheduler, save_dir, save_to_disk, logger, scaler)
        self.cfg = cfg.clone()

    def _load_file(self, f):
        if f.startswith("catalog://"):
            paths_catalog = import_file("atss_core.config.paths_catalog",
                                        self.cfg.PATHS_CATALOG, True)
            name = f[len("catalog://"):]
            try:
                catalog_f = paths_catalog.ModelCatalog.get(name)
            except (KeyError, RuntimeError) as error:
                raise FileNotFoundError(f"{f} is not in the ModelCatalog of "
                                        f"{self.cfg.PATHS_CATALOG}: {error}") from None
            self.logger.info("%s points to %s", f, catalog_f)
            f = catalog_f
        if f.startswith(("http://", "https://")):
            cached_f = cache_url(f)
            self.logger.info("url %s cached in %s", f, cached_f)
            f = cached_f
        if f.endswith(".pkl"):
            if not os.path.isfile(f):
                raise FileNotFoundError(f"weights file {f} does not exist: check MODEL.WEIGHT")
            return load_c2_format(self.cfg, f)
        loaded = super()._load_file(f)
        # A bare state dict (no "model" entry) is accepted too.
        if "model" not in loaded:
            loaded = dict(model=loaded)
        return loaded
