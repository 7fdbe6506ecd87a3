"""Saving and loading training state (model, optimizer, scheduler, grad scaler, iteration).

Files are written atomically: a checkpoint is written to a temporary file in the same
folder, flushed to disk and renamed into place, and only then is ``last_checkpoint``
(itself replaced atomically) pointed at it. A crash at any moment therefore leaves
``last_checkpoint`` naming a complete file; a temporary file left by a killed process is
removed by ``remove_partial_files`` at the next start.
"""
import atexit
import contextlib
import errno
import logging
import os
import pickle
import re
import socket
import zipfile

import torch

from atss_core.utils.c2_model_loading import load_c2_format
from atss_core.utils.imports import import_file
from atss_core.utils.model_serialization import load_state_dict
from atss_core.utils.model_zoo import cache_url

LAST_CHECKPOINT = "last_checkpoint"
LOCK_FILE = "train.lock"
# The temporary names _atomic_write uses: ".<name>.<pid>.tmp".
_PARTIAL_FILE = re.compile(r"^\..+\.\d+\.tmp$")


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space; the message is one line."""

    def __str__(self):
        return self.strerror


class OutputDirInUseError(RuntimeError):
    """Another live training run holds the output folder's lock."""


class _WriteErrorRecorder:
    """A binary file whose ``write`` keeps the last OSError it raised; the rest is the file's."""

    def __init__(self, file):
        self.file = file
        self.error = None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def _atomic_write(path, write_fn):
    """Write ``path`` via ``write_fn(file)`` into a temporary file, then rename it into place.

    Raises:
        DiskFullError: the device is full; ``path`` and any older file are left as they were.
    """
    folder, name = os.path.split(path)
    # A hidden name in the same folder (os.replace must not cross file systems), unique
    # per process; plain open() so the file gets the usual umask permissions.
    tmp_path = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    recorder = None
    try:
        with open(tmp_path, "wb") as f:
            recorder = _WriteErrorRecorder(f)
            write_fn(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as error:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        # torch.save turns a failed write into a RuntimeError ("unexpected pos ..."); the
        # recorder kept the OSError behind it.
        cause = recorder.error if recorder is not None and recorder.error is not None else error
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            raise DiskFullError(errno.ENOSPC, f"no space left on device while writing {path}; "
                                "the previous checkpoint is unchanged: free some space and rerun "
                                "to resume from it") from None
        raise
    # Persist the rename itself, so that after a power loss a later rename (of
    # last_checkpoint) cannot survive while this one is lost.
    folder_fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def remove_partial_files(folder):
    """Delete the temporary files that a process killed inside ``_atomic_write`` left in
    ``folder``; returns their names. Call it only while holding the folder's lock."""
    removed = sorted(name for name in os.listdir(folder) if _PARTIAL_FILE.match(name))
    for name in removed:
        os.unlink(os.path.join(folder, name))
    return removed


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _process_start_time(pid):
    """When process ``pid`` started (clock ticks since boot, from /proc), or "" where that
    cannot be read. With the pid it names one process: pids are reused (after a reboot, in a
    restarted container), start times of the same pid are not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    # Field 22 of stat is the start time; field 2 (the command) may hold spaces and ")".
    fields_after_command = stat.rpartition(")")[2].split()
    return fields_after_command[19] if len(fields_after_command) > 19 else ""


def _lock_holder_alive(pid, start_time):
    """Whether the process that wrote a lock with ``pid`` and ``start_time`` still runs; a lock
    without a start time (older files, systems without /proc) trusts the pid alone."""
    if not _process_alive(pid):
        return False
    return not start_time or _process_start_time(pid) in ("", start_time)


def lock_output_dir(folder):
    """Take ``folder/train.lock`` (holding "pid@host:start_time") for this process until it exits.

    A lock whose process has died (e.g. killed with -9) is taken over, also when another
    process has since been given its pid.

    Raises:
        OutputDirInUseError: a live process, or a process on another host, holds the lock.
    """
    path = os.path.join(folder, LOCK_FILE)
    owner = f"{os.getpid()}@{socket.gethostname()}:{_process_start_time(os.getpid())}"
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = f.read().strip()
            except FileNotFoundError:  # released in the meantime
                continue
            pid, _, host_and_start = holder.partition("@")
            host, _, start_time = host_and_start.partition(":")
            if host and host != socket.gethostname():
                raise OutputDirInUseError(
                    f"{folder} is in use by a training run on {host} (pid {pid}, lock file {path}); "
                    "use another OUTPUT_DIR, or delete the lock file if that run has ended") from None
            if pid.isdigit() and int(pid) != os.getpid() and _lock_holder_alive(int(pid), start_time):
                raise OutputDirInUseError(
                    f"{folder} is in use by a running training (pid {pid}, lock file {path}); "
                    "wait for it to end or use another OUTPUT_DIR") from None
            with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                os.unlink(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        atexit.register(_unlock, path, owner)
        return path


def _unlock(path, owner):
    """Remove the lock at ``path`` if this process (``owner``) still holds it."""
    try:
        with open(path) as f:
            if f.read().strip() == owner:
                os.unlink(path)
    except FileNotFoundError:
        pass


def _unpickler_problem(message):
    """What torch's multi-line weights_only error says was wrong (e.g. "Unsupported global:
    GLOBAL os.system was not an allowed global by default"), else its first line."""
    found = re.search(r"Unsupported [^\n]*", message)
    if found:
        return found.group(0).split(". Please")[0]
    return message.strip().splitlines()[0] if message.strip() else "unreadable pickle"


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
        settings (dict[str, plain data], optional): config values saved with every checkpoint
            (e.g. ``{"SOLVER.BASE_LR": 0.01}``); on resume each one that changed since is logged.
    """

    def __init__(self, model, optimizer=None, scheduler=None, save_dir="", save_to_disk=None,
                 logger=None, scaler=None, settings=None):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.logger = logger or logging.getLogger(__name__)
        self.settings = settings

    def save(self, name, **kwargs):
        """Write ``<save_dir>/<name>.pth`` with the state plus ``kwargs`` (e.g. iteration).

        Raises:
            DiskFullError: no space left; the previous checkpoint stays the last one.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None and self.scaler.is_enabled():
            data["scaler"] = self.scaler.state_dict()
        if self.settings is not None:
            data["settings"] = self.settings
        data.update(kwargs)

        os.makedirs(self.save_dir, exist_ok=True)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", save_file)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(save_file)

    def load(self, f=None, allow_shape_mismatch=True, use_last_checkpoint=True):
        """Restore state and return the checkpoint's other entries (e.g. ``iteration``).

        When ``use_last_checkpoint`` is set and ``save_dir`` has a ``last_checkpoint``, training
        resumes from it and ``f`` is ignored: the model (which must fit it completely),
        the optimizer's momentum buffers, the scheduler's iteration and the scaler are
        restored, while the solver's settings (lr, weight decay, momentum, steps, gamma,
        warm-up) stay those of the current config, so the lr schedule follows the config.
        Otherwise ``f`` (typically MODEL.WEIGHT) only initialises the model weights, so
        fine-tuning from a published checkpoint starts a fresh schedule at iteration 0.
        Weights whose shape does not fit, or model weights the file lacks, are skipped with
        a warning, or, with ``allow_shape_mismatch=False`` (evaluation, demos), raise
        ValueError; so does having no weights at all then.

        Raises:
            FileNotFoundError: ``f`` or the file named in ``last_checkpoint`` is missing, or
                (``allow_shape_mismatch=False``) no file is given at all.
            ValueError: the file is not a readable checkpoint, or its weights do not fit.
            pickle.UnpicklingError: the file holds more than tensors and plain data.
        """
        if use_last_checkpoint and self.has_checkpoint():
            return self._resume(self.get_checkpoint_file())
        if not f:
            if not allow_shape_mismatch:
                where = f" and {self.save_dir} has no {LAST_CHECKPOINT}" if self.save_dir else ""
                raise FileNotFoundError(f"no weights given{where}: name a trained model's weights "
                                        "file (MODEL.WEIGHT)")
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        self.logger.info("Loading checkpoint from %s", f)
        checkpoint = self._load_file(f)
        self._load_model(checkpoint, f, allow_shape_mismatch)
        return {}

    def _resume(self, f):
        checkpoint = self._load_file(f)
        self.logger.info("Resuming from %s (iteration %s); delete %s to start fresh instead",
                         f, checkpoint.get("iteration", "?"), os.path.join(self.save_dir, LAST_CHECKPOINT))
        changes = self._changed_settings(checkpoint.pop("settings", None))
        for key, (saved, current) in changes.items():
            self.logger.warning("%s changed since the checkpoint (%s -> %s): the run goes on with %s",
                                key, saved, current, current)
        try:
            # A resumed run must continue the same model: nothing may be skipped.
            self._load_model(checkpoint, f, allow_shape_mismatch=False)
        except ValueError as error:
            changed = "".join(f"; {key} changed since the checkpoint ({saved} -> {current})"
                              for key, (saved, current) in changes.items())
            raise ValueError(f"cannot resume: {error}{changed}") from None
        self._load_training_state(checkpoint, f)
        return checkpoint

    def _changed_settings(self, saved_settings):
        """``{key: (saved, current)}`` for the settings that differ from ``saved_settings``."""
        if not saved_settings or not self.settings:
            return {}

        def comparable(value):
            return tuple(value) if isinstance(value, (list, tuple)) else value

        return {key: (saved_settings[key], current) for key, current in self.settings.items()
                if key in saved_settings and comparable(saved_settings[key]) != comparable(current)}

    def _load_training_state(self, checkpoint, f):
        """Optimizer, scheduler and scaler state from ``checkpoint``; the optimizer's and the
        scheduler's settings stay those they were built with (the config)."""
        optimizer_state = checkpoint.pop("optimizer", None)
        if self.optimizer is not None and optimizer_state is not None:
            self.logger.info("Loading optimizer from %s", f)
            configured = [{key: value for key, value in group.items() if key != "params"}
                          for group in self.optimizer.param_groups]
            self.optimizer.load_state_dict(optimizer_state)
            for group, settings in zip(self.optimizer.param_groups, configured):
                group.update(settings)
        scheduler_state = checkpoint.pop("scheduler", None)
        if self.scheduler is not None and scheduler_state is not None:
            self.logger.info("Loading scheduler from %s", f)
            # Only the progress comes from the file; the lr of that iteration is recomputed
            # from the schedule the scheduler was built with.
            self.scheduler.last_epoch = scheduler_state["last_epoch"]
            self.scheduler._step_count = scheduler_state.get("_step_count", self.scheduler.last_epoch + 1)
            lrs = self.scheduler.get_lr()
            for group, lr in zip(self.scheduler.optimizer.param_groups, lrs):
                group["lr"] = lr
            self.scheduler._last_lr = list(lrs)
        scaler_state = checkpoint.pop("scaler", None)
        if self.scaler is not None and self.scaler.is_enabled() and scaler_state is not None:
            self.logger.info("Loading scaler from %s", f)
            self.scaler.load_state_dict(scaler_state)

    def has_checkpoint(self):
        return bool(self.save_dir) and os.path.exists(
            os.path.join(self.save_dir, LAST_CHECKPOINT))

    def get_checkpoint_file(self):
        """Path of the file named in ``last_checkpoint``.

        The name is stored relative to ``save_dir``, so a copied or moved output folder
        resumes from its own files. Older files hold an absolute path: if that path no
        longer exists, the same file name inside ``save_dir`` is used.
        """
        tag_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        try:
            with open(tag_file) as f:
                last_saved = f.read().strip()
        except FileNotFoundError:  # removed by another process in the meantime
            return ""
        if not last_saved:
            return ""
        if not os.path.isabs(last_saved):
            return os.path.join(self.save_dir, last_saved)
        moved = os.path.join(self.save_dir, os.path.basename(last_saved))
        if not os.path.exists(last_saved) and os.path.exists(moved):
            return moved
        return last_saved

    def tag_last_checkpoint(self, last_filename):
        tag_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        relative = os.path.relpath(last_filename, self.save_dir)
        _atomic_write(tag_file, lambda f: f.write(relative.encode("utf-8")))

    def _load_file(self, f):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"weights file {f} does not exist: check MODEL.WEIGHT "
                                    f"(or {LAST_CHECKPOINT} in the output folder)")
        if os.path.getsize(f) == 0:
            raise ValueError(f"weights file {f} is empty (0 bytes); copy or download it again")
        try:
            # weights_only: a checkpoint may hold tensors and plain data, never code.
            checkpoint = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as error:
            detail = _unpickler_problem(str(error))
            if "global" not in detail.lower():  # not code, just not a pickle torch can read
                raise ValueError(f"weights file {f} is not a PyTorch checkpoint ({detail})") from None
            raise pickle.UnpicklingError(
                f"refusing to load {f}: it holds objects other than tensors and plain data "
                f"({detail})") from None
        except Exception as error:  # noqa: BLE001
            # Text files, truncated downloads and other non-checkpoints fail in many ways
            # (RuntimeError, EOFError, KeyError, IndexError, ...).
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"weights file {f} is not a readable PyTorch checkpoint ({detail}); "
                             "it may be truncated or of another format: copy or download it again") from None
        if not isinstance(checkpoint, dict):
            raise ValueError(f"weights file {f} holds a {type(checkpoint).__name__}, not a state dict")
        return checkpoint

    def _load_model(self, checkpoint, f, allow_shape_mismatch=True):
        state_dict = checkpoint.pop("model", None)
        if not isinstance(state_dict, dict):
            raise ValueError(f"weights file {f} has no state dict under 'model'")
        try:
            load_state_dict(self.model, state_dict, allow_shape_mismatch, source=f)
        except ValueError as error:
            raise ValueError(f"{f}: {error}") from None


class DetectronCheckpointer(Checkpointer):
    """Checkpointer that also understands ``catalog://`` names, URLs and Detectron ``.pkl``.

    ``cfg`` supplies PATHS_CATALOG (for ``catalog://``) and the backbone settings needed
    to rename Caffe2 blobs.
    """

    def __init__(self, cfg, model, optimizer=None, scheduler=None, save_dir="",
                 save_to_disk=None, logger=None, scaler=None, settings=None):
        super().__init__(model, optimizer, scheduler, save_dir, save_to_disk, logger, scaler, settings)
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
            if zipfile.is_zipfile(f):  # what torch.save writes
                raise ValueError(f"weights file {f} is a PyTorch checkpoint named .pkl (which means a "
                                 "Detectron pickle here); rename it to .pth")
            try:
                return load_c2_format(self.cfg, f)
            except EOFError:
                raise ValueError(f"weights file {f} ends early (empty or truncated); "
                                 "copy or download it again") from None
        loaded = super()._load_file(f)
        # A bare state dict (no "model" entry) is accepted too.
        if "model" not in loaded:
            loaded = dict(model=loaded)
        return loaded
