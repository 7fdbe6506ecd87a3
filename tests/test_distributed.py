"""Distributed training and evaluation end to end, with the real model and the real tools.

Every run is the command line a user types (``python tools/train_net.py``, ``torchrun``,
``python -m torch.distributed.launch``, a two-node ``torchrun``, ``tools/test_net.py``), on CPU
with the gloo backend, in its own process group (so a hang can be killed as a whole) and under
a timeout. The oracle is always the single-process run: N processes with SOLVER.IMS_PER_BATCH
images in total must see, augment and weigh exactly the images one process sees, so the losses
of every iteration and the final weights agree up to float summation order.

The configuration is the quick-start one shrunk for speed, with one change of backbone: the
quick-start MobileNetV2 normalises with trainable BatchNorm, whose batch statistics are taken
over each process's own images (torch's SyncBatchNorm has no CPU path), so its N-process losses
differ from one process's by design (about 1 % here). A slim ResNet-50 with FrozenBatchNorm
(the ATSS configs' backbone, narrowed to 16-channel stem / 8-wide bottlenecks) has no
cross-image state, which makes the comparison exact.

The losses of each iteration are recorded by a ``sitecustomize`` hook put on the subprocesses'
PYTHONPATH: it wraps ``MetricLogger.update`` and writes what rank 0's trainer reported (the
losses averaged over processes) to a json file at exit. The log only prints 4 decimals every
20 iterations.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from atss_core.config import cfg as default_cfg
from atss_core.data.datasets.synthetic_shapes import write_split
from atss_core.modeling.detector import build_detection_model
from atss_core.utils.miscellaneous import seed_all_rng
from conftest import REPO_ROOT, load_tool

PYTHON = sys.executable
CONFIG = "configs/quickstart/atss_mnv2_fpn_shapes.yaml"
RUN_TIMEOUT_S = 150  # one command; a healthy run takes 5-20 s, a hang is killed at this point
METRICS_ENV = "ATSS_TEST_METRICS"

SMALL_FROZEN_BN_MODEL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.BACKBONE.CONV_BODY", "R-50-FPN-RETINANET",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "DATALOADER.NUM_WORKERS", "0",
    # Grouping by aspect ratio reorders each process's own stream, not the global one.
    "DATALOADER.ASPECT_RATIO_GROUPING", "False",
    # No warm-up, so that three iterations move the weights well beyond the tolerance.
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.IMS_PER_BATCH", "2",
]

METRICS_HOOK = textwrap.dedent('''
    """Test hook: record the trainer's metrics of every iteration (see tests/test_distributed.py)."""
    import atexit
    import json
    import os

    _path = os.environ.get("ATSS_TEST_METRICS")
    if _path:
        from atss_core.utils import metric_logger

        _recorded = []
        _update = metric_logger.MetricLogger.update

        def _recording_update(self, **kwargs):
            if "loss" in kwargs:  # the per-iteration loss update, not the timing one
                _recorded.append({name: float(value) for name, value in kwargs.items()})
            _update(self, **kwargs)

        metric_logger.MetricLogger.update = _recording_update

        @atexit.register
        def _write():
            if _recorded:
                with open(f"{_path}.rank{os.environ.get('RANK', '0')}.json", "w") as stream:
                    json.dump(_recorded, stream)
''')


# ---------------------------------------------------------------------------------------------
# Running commands


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(hook_dir, metrics_prefix=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(hook_dir), str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"  # two processes share the two cores of the CI machine
    env["CUDA_VISIBLE_DEVICES"] = ""  # these runs test the CPU / gloo path even on a GPU host
    env.pop(METRICS_ENV, None)
    if metrics_prefix is not None:
        env[METRICS_ENV] = str(metrics_prefix)
    return env


def _start(command, env):
    # A session of its own, so that a hung launcher and all its workers can be killed together.
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(process, deadline):
    """Wait for ``process`` until ``deadline``; returns (exit code, output). A run still going
    at the deadline is killed with its whole process group and fails the test as a hang."""
    try:
        output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(process.args[:4])} ... hung (killed after {RUN_TIMEOUT_S} s); "
                    f"last output:\n{output[-3000:]}")
    return process.returncode, output


def _run_all(commands, env):
    """Start ``commands`` together (e.g. the two nodes of one job) and wait for all of them."""
    processes = [_start(command, env) for command in commands]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        return [_finish(process, deadline) for process in processes]
    finally:  # one command hung: do not leave the others of its job behind
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()


def _run_ok(commands, env):
    """Run ``commands`` as one job; every one must succeed. Returns their outputs."""
    results = _run_all(commands, env)
    for returncode, output in results:
        assert returncode == 0, f"exit code {returncode}; output:\n{output[-6000:]}"
    return [output for _, output in results]


def _launch_commands(launcher, script, port):
    """The command lines that start ``script``: one process ("single") or two processes
    (``python -m torch.distributed.run`` is what the ``torchrun`` command runs)."""
    if launcher == "single":
        return [[PYTHON, script]]
    if launcher == "torchrun":
        return [[PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2",
                 f"--master_port={port}", script]]
    if launcher == "launch":  # the deprecated launcher passes --local-rank=N to the script
        return [[PYTHON, "-m", "torch.distributed.launch", "--nproc_per_node=2",
                 f"--master_port={port}", script]]
    if launcher == "two_nodes":  # one process on each of two "nodes", rendezvous over env://
        return [[PYTHON, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                 "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", script]
                for node in (0, 1)]
    raise ValueError(launcher)


# ---------------------------------------------------------------------------------------------
# Data and runs


def _coco_name(root, split):
    return f"coco:{root / split}:{root / 'annotations' / f'instances_{split}.json'}"


def _shapes(root, split, num_images, drop_boxes_of=(), corrupt=()):
    """A small quick-start split; the 1-based image ids in ``drop_boxes_of`` lose their boxes
    and those in ``corrupt`` get an unreadable image file. Returns its dataset name."""
    write_split(root, split, num_images, seed=0, image_size=160)
    ann_file = root / "annotations" / f"instances_{split}.json"
    content = json.loads(ann_file.read_text())
    content["annotations"] = [ann for ann in content["annotations"]
                              if ann["image_id"] not in drop_boxes_of]
    ann_file.write_text(json.dumps(content))
    for image_id in corrupt:
        (root / split / f"{image_id:06d}.jpg").write_bytes(b"not a jpeg")
    return _coco_name(root, split)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Hook folder, an 8-image training split and a 5-image validation split (5 is odd on
    purpose: the 2-process evaluation sampler pads with a repeated image)."""
    root = tmp_path_factory.mktemp("distributed")
    hook_dir = root / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(METRICS_HOOK)
    data = root / "data"
    return {"root": root, "hook": hook_dir,
            "train": _shapes(data, "train", 8), "val": _shapes(data, "val", 5)}


def _train(workspace, launcher, output_dir, train_set, extra_opts=()):
    """Train with ``launcher`` and return the per-iteration metrics of rank 0."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True)
    metrics = output_dir / "metrics"
    opts = [*SMALL_FROZEN_BN_MODEL, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4",
            "DATASETS.TRAIN", f"('{train_set}',)", "DATASETS.TEST", f"('{workspace['val']}',)",
            *extra_opts, "OUTPUT_DIR", str(output_dir)]
    commands = [command + ["--config-file", CONFIG, "--skip-test", *opts]
                for command in _launch_commands(launcher, "tools/train_net.py", _free_port())]
    outputs = _run_ok(commands, _environment(workspace["hook"], metrics))
    # DDP's own warnings: gradients laid out unlike their parameters (DDP then copies them every
    # step) and the keyword torch 2.14 deprecates.
    for warning in ("Grad strides do not match bucket view strides", "`broadcast_buffers` is deprecated"):
        assert not any(warning in output for output in outputs), f"{launcher}: DDP warned: {warning}"
    ranks = sorted(path.name for path in output_dir.glob("metrics.rank*.json"))
    expected_ranks = ["metrics.rank0.json"] if launcher == "single" else [
        "metrics.rank0.json", "metrics.rank1.json"]
    assert ranks == expected_ranks, f"{launcher}: processes that trained: {ranks}"
    return json.loads((output_dir / "metrics.rank0.json").read_text())


def _final_weights(output_dir):
    """model_final.pth's state dict without DDP's ``module.`` prefix."""
    state = torch.load(Path(output_dir) / "model_final.pth", weights_only=True)["model"]
    return {key.removeprefix("module."): value for key, value in state.items()}


def _max_difference(reference, other):
    """Largest absolute difference between two state dicts' float tensors."""
    assert reference.keys() == other.keys()
    return max((other[key] - value).abs().max().item()
               for key, value in reference.items() if value.is_floating_point())


def _assert_same_training(single_metrics, single_dir, metrics, output_dir, label):
    assert len(metrics) == len(single_metrics)
    max_loss_rel = 0.0
    for iteration, (expected, got) in enumerate(zip(single_metrics, metrics), 1):
        assert expected.keys() == got.keys()
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-7), (
                f"{label}: {name} of iteration {iteration}: {got[name]} vs {value} with one process")
            max_loss_rel = max(max_loss_rel, abs(got[name] - value) / abs(value))
    reference, weights = _final_weights(single_dir), _final_weights(output_dir)
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda message, key=key: f"{label}: {key}: {message}")
    print(f"{label}: largest relative loss difference to one process {max_loss_rel:.3g}, "
          f"largest weight difference {_max_difference(reference, weights):.3g}")


@pytest.fixture(scope="module")
def single_process(workspace):
    """The reference: one process, 4 images per iteration, 3 iterations."""
    output_dir = workspace["root"] / "single"
    metrics = _train(workspace, "single", output_dir, workspace["train"])
    return output_dir, metrics


# ---------------------------------------------------------------------------------------------
# Tests


def test_single_process_run_trains_and_logs_its_metrics(workspace, single_process):
    """The reference itself: the weights moved away from their seeded initial values, and the
    hook's values are those the log printed (median and global average after 3 iterations)."""
    output_dir, metrics = single_process
    assert len(metrics) == 3 and all(set(m) == {"loss", "loss_cls", "loss_reg", "loss_centerness"}
                                     for m in metrics)
    for entry in metrics:
        assert entry["loss"] == pytest.approx(
            entry["loss_cls"] + entry["loss_reg"] + entry["loss_centerness"], rel=1e-6)

    log_line = next(line for line in (output_dir / "log.txt").read_text().splitlines()
                    if "iter: 3" in line)
    for name in ("loss", "loss_cls", "loss_reg", "loss_centerness"):
        values = sorted(entry[name] for entry in metrics)
        assert f"{name}: {values[1]:.4f} ({sum(values) / 3:.4f})" in log_line

    # train_net seeds with cfg.SEED before building the model, so this is its initial state.
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(REPO_ROOT / CONFIG))
    cfg.merge_from_list(SMALL_FROZEN_BN_MODEL)
    seed_all_rng(cfg.SEED)
    initial = build_detection_model(cfg).state_dict()
    update = _max_difference(initial, _final_weights(output_dir))
    assert update > 1e-3, "three iterations should move the weights"
    print(f"largest weight update in 3 iterations: {update:.3g}")


@pytest.mark.parametrize("launcher", ["torchrun", "launch", "two_nodes"])
def test_two_processes_train_like_one(workspace, single_process, launcher):
    """2 processes x 2 images = 1 process x 4 images, iteration by iteration and in the final
    weights, whether started by torchrun, torch.distributed.launch or as two nodes."""
    single_dir, single_metrics = single_process
    output_dir = workspace["root"] / launcher
    start = time.monotonic()
    metrics = _train(workspace, launcher, output_dir, workspace["train"])
    print(f"{launcher}: {time.monotonic() - start:.1f} s")
    _assert_same_training(single_metrics, single_dir, metrics, output_dir, launcher)
    # Only rank 0 saved, under DDP's "module." names like the published checkpoints.
    saved = torch.load(output_dir / "model_final.pth", weights_only=True)["model"]
    assert all(key.startswith("module.") for key in saved)
    assert (output_dir / "last_checkpoint").read_text().strip().endswith("model_final.pth")


def test_two_processes_evaluate_during_training_and_only_rank_0_writes(workspace, single_process):
    """TEST.EVAL_PERIOD under torchrun: both processes evaluate (no hang), rank 0 alone writes
    metrics.json, model_best and prunes checkpoints, and the training is the one-process one."""
    single_dir, single_metrics = single_process
    output_dir = workspace["root"] / "observed"
    opts = ["TEST.EVAL_PERIOD", "2", "SOLVER.LOG_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
            "SOLVER.CHECKPOINT_KEEP", "1", "MODEL.ATSS.INFERENCE_TH", "0.0"]
    metrics = _train(workspace, "torchrun", output_dir, workspace["train"], opts)
    _assert_same_training(single_metrics, single_dir, metrics, output_dir, "evaluating torchrun")
    rows = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    assert [(row["iteration"], "bbox/AP" in row) for row in rows] == [
        (1, False), (2, False), (2, True), (3, False), (3, True)]
    assert sorted(path.name for path in output_dir.glob("*.pth")) == [
        "model_0000003.pth", "model_best.pth", "model_final.pth"]
    assert len(list(output_dir.glob("events.out.tfevents.*"))) == 1


def test_rank_without_any_box_keeps_in_step(workspace):
    """Two images, one without boxes, one image per process: in every iteration one rank has
    no positive at all. Its loss collectives must still run (no hang), and the result must be
    the one-process result."""
    data = workspace["root"] / "half_empty"
    train_set = _shapes(data, "train", 2, drop_boxes_of=(2,))
    opts = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.KEEP_EMPTY_IMAGES", "True"]
    runs = {}
    for launcher in ("single", "torchrun"):
        output_dir = data / launcher
        runs[launcher] = output_dir, _train(workspace, launcher, output_dir, train_set, opts)
    single_dir, single_metrics = runs["single"]
    output_dir, metrics = runs["torchrun"]
    _assert_same_training(single_metrics, single_dir, metrics, output_dir, "empty rank")


def test_failing_worker_ends_the_whole_job_with_its_error(workspace):
    """One process hits an unreadable image while the other waits in a collective: torchrun
    must stop both and report the error, not hang until the collective times out."""
    data = workspace["root"] / "corrupt"
    train_set = _shapes(data, "train", 2, corrupt=(2,))
    opts = [*SMALL_FROZEN_BN_MODEL, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.TRAIN", f"('{train_set}',)", "OUTPUT_DIR", str(data / "out")]
    [command] = _launch_commands("torchrun", "tools/train_net.py", _free_port())
    start = time.monotonic()
    [(returncode, output)] = _run_all([command + ["--config-file", CONFIG, "--skip-test", *opts]],
                                      _environment(workspace["hook"]))
    elapsed = time.monotonic() - start
    assert returncode != 0
    assert f"cannot read image file {data / 'train' / '000002.jpg'}" in output
    assert "ChildFailedError" in output  # torchrun's summary of the failed job
    assert not (data / "out" / "model_final.pth").exists()
    print(f"failing job ended after {elapsed:.1f} s")


def _score_in_this_process(opts, predictions, output_folder):
    """COCO metrics that one process's evaluator gives ``predictions`` on the test set of ``opts``."""
    from atss_core.data import make_data_loader
    from atss_core.data.datasets.evaluation import evaluate

    cfg = default_cfg.clone()
    cfg.merge_from_file(str(REPO_ROOT / CONFIG))
    cfg.merge_from_list(opts)
    [data_loader] = make_data_loader(cfg, is_train=False)
    output_folder.mkdir()
    results, _ = evaluate(dataset=data_loader.dataset, predictions=predictions, output_folder=str(output_folder),
                          box_only=False, iou_types=("bbox",), expected_results=(), expected_results_sigma_tol=4)
    return results.as_dict()


def test_two_process_evaluation_matches_one(workspace, single_process):
    """tools/test_net.py under torchrun gathers every image's detections (the padded duplicate
    of the odd 5-image set included once) as one process finds them, and scores the gathered
    detections as one process scores them.

    The two properties are checked separately. This untrained model's scores tie and its boxes
    sit on IoU thresholds, so the AP of two runs whose boxes differ by float noise (1e-5 px) may
    differ by tie order alone; comparing the two runs' APs would measure that noise, not the
    gathering or the scoring."""
    single_dir, _ = single_process
    # An untrained model scores below the default 0.05; keep every candidate so that there
    # is something to compare.
    opts = [*SMALL_FROZEN_BN_MODEL, "DATASETS.TEST", f"('{workspace['val']}',)",
            "MODEL.ATSS.INFERENCE_TH", "0.0"]
    results = {}
    for launcher in ("single", "torchrun"):
        output_dir = workspace["root"] / f"eval_{launcher}"
        commands = [command + ["--config-file", CONFIG, "--ckpt", str(single_dir / "model_final.pth"),
                               *opts, "OUTPUT_DIR", str(output_dir)]
                    for command in _launch_commands(launcher, "tools/test_net.py", _free_port())]
        start = time.monotonic()
        _run_ok(commands, _environment(workspace["hook"]))
        print(f"evaluation, {launcher}: {time.monotonic() - start:.1f} s")
        # The folder under inference/ is named after the dataset, "coco:IMG_DIR:ANN_FILE" here.
        [folder] = [path.parent for path in output_dir.rglob("predictions.pth")]
        results[launcher] = (torch.load(folder / "predictions.pth", weights_only=False),
                             json.loads((folder / "coco_results.json").read_text()))

    (single_predictions, single_scores), (predictions, scores) = results["single"], results["torchrun"]
    # Gathering: one prediction per image, in dataset order, equal to one process's up to float noise.
    assert len(predictions) == len(single_predictions) == 5
    max_diff = 0.0
    for index, (expected, got) in enumerate(zip(single_predictions, predictions)):
        assert len(expected) == 100 and len(got) == len(expected), index
        assert got.size == expected.size, index
        # Detection order is not part of the contract: compare in score order.
        expected_order = expected.get_field("scores").argsort(descending=True, stable=True)
        got_order = got.get_field("scores").argsort(descending=True, stable=True)
        for field in ("scores", "labels"):
            torch.testing.assert_close(got.get_field(field)[got_order], expected.get_field(field)[expected_order])
        torch.testing.assert_close(got.bbox[got_order], expected.bbox[expected_order],
                                   rtol=1e-5, atol=1e-3)
        max_diff = max(max_diff, (got.bbox[got_order] - expected.bbox[expected_order]).abs().max().item())
    # Scoring: what the two-process run wrote is what one process's evaluator gives its gathered
    # detections (and the one-process run's file is that evaluator's result for its own).
    assert scores.keys() == single_scores.keys() == {"bbox"}
    assert scores == _score_in_this_process(opts, predictions, workspace["root"] / "rescored_torchrun")
    assert single_scores == _score_in_this_process(opts, single_predictions, workspace["root"] / "rescored_single")
    print(f"evaluation: max box difference {max_diff:.3g} px; AP {scores['bbox']['AP']} "
          f"(one process: {single_scores['bbox']['AP']})")


def test_sync_batchnorm_with_cpu_processes_is_refused_in_one_line():
    """torch's SyncBatchNorm has no CPU path (every process would raise at its first forward),
    so train_net says so before building anything."""
    train_net = load_tool("train_net")
    cfg = default_cfg.clone()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.USE_SYNCBN", "True"])
    with pytest.raises(SystemExit) as exit_info:
        train_net.train(cfg, local_rank=0, distributed=True)
    message = str(exit_info.value.code)
    assert message.startswith("error: MODEL.USE_SYNCBN needs GPUs") and "\n" not in message
