"""Checkpoints a run can trust (issue 10): weights that do not all come from the file are refused
for evaluation, unreadable weight files and a full disk give one line, last_checkpoint is
relative to its folder, a resumed schedule follows the config, and one training run owns an
output folder at a time."""
import errno
import io
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

from atss_core.config import cfg as default_cfg
from atss_core.solver import make_lr_scheduler, make_optimizer
from atss_core.utils import checkpoint as checkpoint_module
from atss_core.utils.checkpoint import (LOCK_FILE, Checkpointer, DetectronCheckpointer, DiskFullError,
                                        OutputDirInUseError, lock_output_dir, remove_partial_files)


class _TinyDetector(nn.Module):
    """Keys shaped like the detector's: a backbone and a head with a class-dependent layer."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
        self.head = nn.Module()
        self.head.cls_logits = nn.Conv2d(4, num_classes, 1)
        self.head.bbox_pred = nn.Conv2d(4, 4, 1)


def _weights(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def _assert_weights_equal(model, expected):
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def _one_line(error):
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    return message


# --------------------------------------------------------------------------- item 3: missing keys

def _partial_state(model):
    return {key: value for key, value in model.state_dict().items() if key.startswith("backbone.")}


@pytest.mark.parametrize("content, missing", [
    ({"model": {}}, 8),
    ({"model": {"conv.weight": torch.ones(3), "anything": "else"}}, 8),
    ("partial", 4),  # the backbone only: the head's 4 tensors are missing
])
def test_evaluation_refuses_weights_that_leave_model_keys_missing(tmp_path, content, missing):
    torch.manual_seed(1)
    source = _TinyDetector()
    if content == "partial":
        content = {"model": _partial_state(source)}
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    model = _TinyDetector()
    before = _weights(model)
    for checkpointer in (Checkpointer(model), DetectronCheckpointer(default_cfg, model)):
        with pytest.raises(ValueError) as error:
            checkpointer.load(str(path), allow_shape_mismatch=False)
        message = _one_line(error.value)
        assert message.startswith(f"{path}: {missing} of the model's 8 weights are not in the file, e.g. ")
    _assert_weights_equal(model, before)  # nothing half-loaded


def test_bare_random_dict_is_refused_too(tmp_path):
    """DetectronCheckpointer takes a dict without a "model" entry as a bare state dict."""
    path = tmp_path / "random.pth"
    torch.save({"alpha": torch.zeros(2), "beta": 3}, path)
    with pytest.raises(ValueError, match="8 of the model's 8 weights are not in the file"):
        DetectronCheckpointer(default_cfg, _TinyDetector()).load(str(path), allow_shape_mismatch=False)


def test_training_still_loads_partial_weights_and_keeps_the_rest(tmp_path):
    torch.manual_seed(1)
    source = _TinyDetector()
    path = tmp_path / "backbone.pth"
    torch.save({"model": _partial_state(source)}, path)
    torch.manual_seed(2)
    model = _TinyDetector()
    head_before = _weights(model.head)
    assert Checkpointer(model).load(str(path)) == {}
    for key, value in _partial_state(source).items():
        assert torch.equal(model.state_dict()[key], value), key
    _assert_weights_equal(model.head, head_before)


def test_evaluation_refuses_to_run_without_any_weights(tmp_path):
    """A fresh OUTPUT_DIR and no MODEL.WEIGHT: training starts from scratch, evaluation refuses."""
    assert Checkpointer(_TinyDetector(), save_dir=str(tmp_path)).load("") == {}
    with pytest.raises(FileNotFoundError) as error:
        Checkpointer(_TinyDetector(), save_dir=str(tmp_path)).load("", allow_shape_mismatch=False)
    assert _one_line(error.value).startswith(f"no weights given and {tmp_path} has no last_checkpoint")


# --------------------------------------------------------------------------- item 12: unreadable weights

def _write_weights(tmp_path, kind):
    good = tmp_path / "good.pth"
    torch.save({"model": _TinyDetector().state_dict()}, good)
    if kind == "text":
        path = tmp_path / "notes.pth"
        path.write_text("these are not weights\n")
    elif kind == "empty":
        path = tmp_path / "empty.pth"
        path.write_bytes(b"")
    elif kind == "truncated":
        path = tmp_path / "truncated.pth"
        path.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    else:  # a torch file renamed .pkl (the Detectron pickle extension)
        path = tmp_path / "renamed.pkl"
        shutil.copy(good, path)
    return path


@pytest.mark.parametrize("kind, expected", [
    ("text", "is not a "), ("empty", "is empty (0 bytes)"), ("truncated", "is not a readable PyTorch checkpoint"),
    ("renamed_pkl", "is a PyTorch checkpoint named .pkl"),
])
def test_unreadable_weights_files_are_one_line_errors(tmp_path, kind, expected):
    path = _write_weights(tmp_path, kind)
    with pytest.raises(ValueError) as error:
        DetectronCheckpointer(default_cfg, _TinyDetector()).load(str(path), allow_shape_mismatch=False)
    message = _one_line(error.value)
    assert f"weights file {path} " in message and expected in message


def test_truncated_detectron_pickle_is_one_line(tmp_path):
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": [1.0] * 100}, protocol=2)[:20])
    assert not zipfile.is_zipfile(path)
    with pytest.raises((ValueError, pickle.UnpicklingError)) as error:
        DetectronCheckpointer(default_cfg, _TinyDetector()).load(str(path))
    assert str(path) in _one_line(error.value)


# --------------------------------------------------------------------------- item 5: relative last_checkpoint

def test_copied_run_folder_resumes_from_its_own_files(tmp_path):
    torch.manual_seed(1)
    model = _TinyDetector()
    run = tmp_path / "run"
    Checkpointer(model, save_dir=str(run), save_to_disk=True).save("model_0000010", iteration=10)
    assert (run / "last_checkpoint").read_text() == "model_0000010.pth"
    shutil.copytree(run, tmp_path / "copy")
    copied_weights = _weights(model)
    # The old folder goes on training: its file changes, the copy's must be the one resumed.
    with torch.no_grad():
        model.head.bbox_pred.bias.add_(1)
    Checkpointer(model, save_dir=str(run), save_to_disk=True).save("model_0000010", iteration=10)
    copied = Checkpointer(_TinyDetector(), save_dir=str(tmp_path / "copy"))
    assert copied.get_checkpoint_file() == str(tmp_path / "copy" / "model_0000010.pth")
    assert copied.load() == {"iteration": 10}
    _assert_weights_equal(copied.model, copied_weights)


def test_old_absolute_last_checkpoint_still_reads(tmp_path):
    model = _TinyDetector()
    Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True).save("model_final", iteration=3)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "model_final.pth"))
    checkpointer = Checkpointer(_TinyDetector(), save_dir=str(tmp_path))
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_final.pth")
    assert checkpointer.load() == {"iteration": 3}
    _assert_weights_equal(checkpointer.model, _weights(model))


# --------------------------------------------------------------------------- item 6: resume rule

SOLVER_A = ["SOLVER.BASE_LR", 0.1, "SOLVER.STEPS", (4,), "SOLVER.GAMMA", 0.1, "SOLVER.WARMUP_ITERS", 2,
            "SOLVER.WARMUP_FACTOR", 0.5, "SOLVER.WARMUP_METHOD", "constant", "SOLVER.MOMENTUM", 0.9,
            "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.WEIGHT_DECAY_BIAS", 0]


def _solver_parts(save_dir, overrides=(), num_classes=4, seed=0):
    cfg = default_cfg.clone()
    cfg.merge_from_list(SOLVER_A + list(overrides))
    torch.manual_seed(seed)
    model = _TinyDetector(num_classes)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    settings = {"MODEL.ATSS.NUM_CLASSES": num_classes, "SOLVER.BASE_LR": cfg.SOLVER.BASE_LR,
                "SOLVER.STEPS": list(cfg.SOLVER.STEPS), "SOLVER.GAMMA": cfg.SOLVER.GAMMA}
    checkpointer = Checkpointer(model, optimizer, scheduler, str(save_dir), save_to_disk=True,
                                settings=settings)
    return model, optimizer, scheduler, checkpointer


def _train_steps(model, optimizer, scheduler, steps):
    for _ in range(steps):
        loss = sum(parameter.square().sum() for parameter in model.parameters())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_resumed_schedule_follows_the_config_and_logs_each_change(tmp_path, caplog):
    model, optimizer, scheduler, checkpointer = _solver_parts(tmp_path)
    _train_steps(model, optimizer, scheduler, 3)
    checkpointer.save("model_0000003", iteration=3)
    momentum_saved = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]

    # Unchanged config: the lr of iteration 4 is the one an uninterrupted run has.
    _, optimizer_same, scheduler_same, same = _solver_parts(tmp_path, seed=5)
    with caplog.at_level(logging.INFO):
        assert same.load() == {"iteration": 3}
    assert [group["lr"] for group in optimizer_same.param_groups] == [group["lr"] for group in optimizer.param_groups]
    assert not [r for r in caplog.records if "changed since the checkpoint" in r.getMessage()]
    assert any(f"Resuming from {tmp_path / 'model_0000003.pth'} (iteration 3)" in r.getMessage()
               for r in caplog.records)

    # The NaN advice: rerun with a lower BASE_LR (and here other STEPS); the schedule follows.
    caplog.clear()
    resumed, optimizer_new, scheduler_new, new = _solver_parts(
        tmp_path, ["SOLVER.BASE_LR", 0.02, "SOLVER.STEPS", (3,), "SOLVER.BIAS_LR_FACTOR", 1], seed=5)
    with caplog.at_level(logging.INFO):
        new.load()
    # By hand: iteration 3 is past the warm-up (2) and at the new step 3: 0.02 * 0.1.
    for group in optimizer_new.param_groups:
        assert group["lr"] == pytest.approx(0.002, rel=1e-12)
        assert group["initial_lr"] == 0.02 and group["momentum"] == 0.9
    assert scheduler_new.last_epoch == 3 and scheduler_new.milestones == (3,)
    assert scheduler_new.get_last_lr() == [group["lr"] for group in optimizer_new.param_groups]
    for parameter, saved in zip(resumed.parameters(), momentum_saved):
        assert torch.equal(optimizer_new.state[parameter]["momentum_buffer"], saved)
    changes = [r.getMessage() for r in caplog.records if "changed since the checkpoint" in r.getMessage()]
    assert len(changes) == 2
    assert changes[0].startswith("SOLVER.BASE_LR changed since the checkpoint (0.1 -> 0.02)")
    assert changes[1].startswith("SOLVER.STEPS changed since the checkpoint ([4] -> [3])")
    # One step later the new schedule goes on: 0.002 stays until the end of the schedule.
    _train_steps(resumed, optimizer_new, scheduler_new, 1)
    assert optimizer_new.param_groups[0]["lr"] == pytest.approx(0.002, rel=1e-12)


def test_resume_after_changing_num_classes_is_one_line(tmp_path):
    model, optimizer, scheduler, checkpointer = _solver_parts(tmp_path, num_classes=4)
    _train_steps(model, optimizer, scheduler, 1)
    checkpointer.save("model_0000001", iteration=1)
    _, optimizer_new, _, other = _solver_parts(tmp_path, num_classes=6)
    state_before = {key: value.clone() for key, value in other.model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        other.load()
    message = _one_line(error.value)
    assert message.startswith(f"cannot resume: {tmp_path / 'model_0000001.pth'}: 2 weights do not fit the model")
    assert message.endswith("; MODEL.ATSS.NUM_CLASSES changed since the checkpoint (4 -> 6)")
    _assert_weights_equal(other.model, state_before)
    assert not optimizer_new.state  # no momentum buffers of the wrong size were taken


# --------------------------------------------------------------------------- item 11: disk full

def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = _TinyDetector()
    checkpointer = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000001", iteration=1)
    saved = _weights(model)

    def disk_full(data, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with torch.no_grad():
        model.head.bbox_pred.bias.add_(1)
    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(DiskFullError) as error:
        checkpointer.save("model_0000002", iteration=2)
    monkeypatch.undo()
    message = _one_line(error.value)
    assert f"no space left on device while writing {tmp_path / 'model_0000002.pth'}" in message
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    resumed = Checkpointer(_TinyDetector(), save_dir=str(tmp_path))
    assert resumed.load() == {"iteration": 1}
    _assert_weights_equal(resumed.model, saved)


class _FillsUpAfter1000Bytes(io.FileIO):
    def write(self, data):
        if self.tell() + len(data) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_disk_full_inside_torch_save_is_recognised(tmp_path, monkeypatch):
    """torch.save reports a failed write as a RuntimeError ("unexpected pos ..."): the ENOSPC
    behind it must still give the disk-full line."""
    checkpointer = Checkpointer(_TinyDetector(), save_dir=str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000001", iteration=1)
    monkeypatch.setattr(checkpoint_module, "open", _FillsUpAfter1000Bytes, raising=False)
    with pytest.raises(DiskFullError, match=f"^no space left on device while writing {tmp_path / 'model_0000002.pth'};"):
        checkpointer.save("model_0000002", iteration=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


# --------------------------------------------------------------------------- item 10: lock and .tmp files

def test_partial_files_of_killed_writes_are_removed(tmp_path):
    keep = ["model_0000001.pth", "last_checkpoint", ".hidden", "notes.tmp", "log.txt"]
    partial = [".model_0000002.pth.4242.tmp", ".last_checkpoint.17.tmp"]
    for name in keep + partial:
        (tmp_path / name).write_bytes(b"x")
    assert remove_partial_files(str(tmp_path)) == sorted(partial)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


def _finished_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_output_dir_lock_refuses_a_live_run_and_takes_over_a_dead_one(tmp_path):
    lock = tmp_path / LOCK_FILE
    host = socket.gethostname()
    own_start = checkpoint_module._process_start_time(os.getpid())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_start = checkpoint_module._process_start_time(live.pid)
        if sys.platform.startswith("linux"):  # clock ticks since boot; the child started later
            assert live_start.isdigit() and own_start.isdigit() and int(live_start) >= int(own_start)
        # Held by the live process: with its start time, and in the older "pid@host" form.
        for holder in (f"{live.pid}@{host}:{live_start}", f"{live.pid}@{host}"):
            lock.write_text(holder)
            with pytest.raises(OutputDirInUseError) as error:
                lock_output_dir(str(tmp_path))
            assert _one_line(error.value).startswith(
                f"{tmp_path} is in use by a running training (pid {live.pid}, lock file {lock})")
            assert lock.read_text() == holder
        if live_start:  # the pid now belongs to another process than the one that wrote the lock
            lock.write_text(f"{live.pid}@{host}:{int(live_start) - 1}")
            assert lock_output_dir(str(tmp_path)) == str(lock)
            checkpoint_module._unlock(str(lock), lock.read_text())
    finally:
        live.kill()
        live.wait()

    lock.write_text(f"{_finished_pid()}@{host}")  # left behind by a kill -9
    assert lock_output_dir(str(tmp_path)) == str(lock)
    assert lock.read_text() == f"{os.getpid()}@{host}:{own_start}"
    checkpoint_module._unlock(str(lock), f"{os.getpid()}@{host}:{own_start}")
    assert not lock.exists()

    lock.write_text("123@another-host")
    with pytest.raises(OutputDirInUseError, match="in use by a training run on another-host"):
        lock_output_dir(str(tmp_path))
