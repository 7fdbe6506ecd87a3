"""tools/train_net.py and tools/test_net.py as a user meets them (issue 10): which weights are
evaluated, how a run resumes or starts fresh, and one line (exit code != 0, no traceback) for
each everyday mistake. Most cases call the tools' ``main`` in this process; a few run the real
command line, and one starts two processes to see DIST_TIMEOUT end a job with a stopped rank."""
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from atss_core.config import cfg as default_cfg
from atss_core.modeling.detector import build_detection_model
from conftest import REPO_ROOT, load_tool, one_line_exit

QUICKSTART = REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml"
# The quick-start model, small and on CPU, so that building it takes a fraction of a second.
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CONVS", "1", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "32"]


@pytest.fixture
def train_net(monkeypatch):
    module = load_tool("train_net")
    monkeypatch.setattr(module, "cfg", default_cfg.clone())
    return module


@pytest.fixture
def test_net(monkeypatch):
    module = load_tool("test_net")
    monkeypatch.setattr(module, "cfg", default_cfg.clone())
    return module


def _exit_message(tool, argv):
    return one_line_exit(tool.main, argv)


def _small_config(tmp_path, *extra):
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(QUICKSTART))
    cfg.merge_from_list(SMALL + list(extra))
    return cfg


def _save_model(cfg, path, seed):
    torch.manual_seed(seed)
    model = build_detection_model(cfg)
    torch.save({"model": model.state_dict(), "iteration": 7}, path)
    return model.state_dict()


# --------------------------------------------------------------------------- item 12: config mistakes

def _config_cases(tmp_path):
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text('MODEL:\n  DEVICE: "cpu\n  WEIGHT: ""\n')
    listed = tmp_path / "listed.yaml"
    listed.write_text("- MODEL\n- SOLVER\n")
    as_json = tmp_path / "config.json"
    as_json.write_text('{"MODEL": {"DEVICE": "cpu"}}')
    return [
        (["--config-file", str(malformed)], f"config file {malformed} is not valid yaml ("),
        (["--config-file", str(listed)], f"config file {listed} holds a yaml list, expected a mapping"),
        (["--config-file", str(as_json)], f"config file {as_json} is not a .yaml file"),
        (["--config-file", str(QUICKSTART), "MODEL.DEVICE", "gpu"], "MODEL.DEVICE 'gpu' is not a device name"),
        (["--config-file", str(QUICKSTART), "DTYPE", "float8"], "DTYPE must be one of"),
        (["--config-file", str(QUICKSTART), "MODEL.DEVICE", "cuda"],
         "MODEL.DEVICE is 'cuda' but torch sees no GPU on this machine; pass MODEL.DEVICE cpu"),
    ]


@pytest.mark.parametrize("tool_name", ["train_net", "test_net"])
def test_config_mistakes_are_one_line(tool_name, tmp_path, monkeypatch, request):
    tool = request.getfixturevalue(tool_name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on GPU hosts
    for argv, expected in _config_cases(tmp_path):
        monkeypatch.setattr(tool, "cfg", default_cfg.clone())
        message = _exit_message(tool, argv)
        assert message.startswith("error: ") and expected in message, (argv, message)


def test_solver_settings_that_cannot_train_are_refused_before_training(train_net, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train_net, "run", no_training)
    for key in ("SOLVER.MAX_ITER", "SOLVER.CHECKPOINT_PERIOD"):
        for value in ("0", "-5"):
            monkeypatch.setattr(train_net, "cfg", default_cfg.clone())
            message = _exit_message(train_net, ["--config-file", str(QUICKSTART), key, value])
            assert message == f"error: {key} must be a positive number of iterations, got {value}"


@pytest.mark.parametrize("tool_name, key", [("train_net", "SOLVER.IMS_PER_BATCH"),
                                            ("test_net", "TEST.IMS_PER_BATCH")])
def test_batch_not_divisible_by_processes_is_one_line_for_the_job(tool_name, key, monkeypatch, request):
    """Only the first process prints; the others stop quietly, before any process group."""
    tool = request.getfixturevalue(tool_name)

    def no_process_group(*args, **kwargs):
        raise AssertionError("process group started")

    monkeypatch.setattr(tool, "init_distributed", no_process_group)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    message = _exit_message(tool, ["--config-file", str(QUICKSTART), key, "8"])
    assert message == (f"error: {key} (8) must be a positive multiple of the number of processes (3); "
                       f"change {key} or the number of processes")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(tool, "cfg", default_cfg.clone())
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--config-file", str(QUICKSTART), key, "8"])
    assert exit_info.value.code == 1


def test_flags_after_the_key_value_pairs_work(train_net, test_net):
    args = train_net.parse_args(["--config-file", "c.yaml", "SOLVER.MAX_ITER", "20", "--skip-test",
                                 "SOLVER.BASE_LR", "-0.5", "--no-resume"])
    assert (args.skip_test, args.resume) == (True, False)
    assert args.opts == ["SOLVER.MAX_ITER", "20", "SOLVER.BASE_LR", "-0.5"]
    args = test_net.parse_args(["--config-file", "c.yaml", "TEST.IMS_PER_BATCH", "2", "--ckpt", "w.pth",
                                "MODEL.DEVICE", "cpu"])
    assert args.ckpt == "w.pth" and args.opts == ["TEST.IMS_PER_BATCH", "2", "MODEL.DEVICE", "cpu"]


# --------------------------------------------------------------------------- items 3 and 4: test_net's weights

@pytest.fixture
def evaluation_run(tmp_path, test_net, monkeypatch):
    """A config file, an OUTPUT_DIR whose last_checkpoint names one model, and a second model's
    file; ``evaluated()`` gives the weights test_net would have evaluated."""
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    cfg = _small_config(tmp_path, "OUTPUT_DIR", str(output_dir))
    config_file = tmp_path / "small.yaml"
    config_file.write_text(cfg.dump())
    trained = _save_model(cfg, output_dir / "model_final.pth", seed=1)
    (output_dir / "last_checkpoint").write_text("model_final.pth")
    other = _save_model(cfg, tmp_path / "other.pth", seed=2)
    evaluated, folders = [], []

    def record_test(cfg, model, distributed, folder):
        evaluated.append(model.state_dict())
        folders.append(folder)

    monkeypatch.setattr(test_net, "run_test", record_test)
    return {"config": str(config_file), "output_dir": output_dir, "trained": trained, "other": other,
            "evaluated": evaluated, "folders": folders}


def _assert_same(state, expected):
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("how", ["MODEL.WEIGHT", "--ckpt", "MODEL.WEIGHT after flags"])
def test_named_weights_are_evaluated_even_with_a_last_checkpoint(evaluation_run, test_net, how, caplog):
    other = str(evaluation_run["config"]).replace("small.yaml", "other.pth")
    argv = {"MODEL.WEIGHT": ["--config-file", evaluation_run["config"], "MODEL.WEIGHT", other],
            "--ckpt": ["--config-file", evaluation_run["config"], "--ckpt", other],
            "MODEL.WEIGHT after flags": ["--config-file", evaluation_run["config"], "MODEL.DEVICE", "cpu",
                                         "MODEL.WEIGHT", other, "--local-rank", "0"]}[how]
    with caplog.at_level(logging.INFO):
        test_net.main(argv)
    [evaluated] = evaluation_run["evaluated"]
    _assert_same(evaluated, evaluation_run["other"])
    assert f"Evaluating weights from {other} (named on the command line)" in caplog.text
    # Results (and test_net's log) go beside, not over, the end-of-training evaluation's files.
    assert evaluation_run["folders"] == ["inference_other"]
    assert (evaluation_run["output_dir"] / "inference_other" / "log.txt").exists()


def test_without_named_weights_last_checkpoint_is_evaluated(evaluation_run, test_net, caplog):
    with caplog.at_level(logging.INFO):
        test_net.main(["--config-file", evaluation_run["config"]])
    [evaluated] = evaluation_run["evaluated"]
    _assert_same(evaluated, evaluation_run["trained"])
    assert f"Evaluating weights from {evaluation_run['output_dir'] / 'model_final.pth'} (named by " in caplog.text
    assert evaluation_run["folders"] == ["inference"]  # the run's own final weights


@pytest.mark.parametrize("content", ["empty_model", "random", "partial"])
def test_test_net_refuses_weights_that_are_not_all_from_the_file(evaluation_run, test_net, tmp_path, content):
    trained = evaluation_run["trained"]
    state = {"empty_model": {"model": {}},
             "random": {"alpha": torch.zeros(3), "beta": "text"},
             "partial": {"model": {key: value for key, value in trained.items() if "rpn.head" not in key}}}[content]
    path = tmp_path / f"{content}.pth"
    torch.save(state, path)
    message = _exit_message(test_net, ["--config-file", evaluation_run["config"], "--ckpt", str(path)])
    assert message.startswith(f"test_net: {path}: ") and "weights are not in the file, e.g. " in message
    assert not evaluation_run["evaluated"]


def test_test_net_refuses_to_evaluate_no_weights_at_all(test_net, tmp_path):
    """The quick-start config in a fresh OUTPUT_DIR would evaluate a random model."""
    message = _exit_message(test_net, ["--config-file", str(QUICKSTART), *SMALL, "OUTPUT_DIR", str(tmp_path)])
    assert message.startswith(f"test_net: no weights given and {tmp_path} has no last_checkpoint")


def test_demo_refuses_weights_that_are_not_all_from_the_file(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "demo"))
    try:
        import atss_demo
    finally:
        sys.path.remove(str(REPO_ROOT / "demo"))
    cfg = _small_config(tmp_path)
    config_file = tmp_path / "small.yaml"
    config_file.write_text(cfg.dump())
    weights = tmp_path / "empty.pth"
    torch.save({"model": {}}, weights)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        atss_demo.main(["--config-file", str(config_file), "--weights", str(weights), "--images-dir", str(image),
                        "--output-dir", str(tmp_path / "drawn")])
    message = str(exit_info.value.code)
    assert message.startswith(f"atss_demo: error: cannot load the model from {weights}: ")
    assert "weights are not in the file" in message and "\n" not in message
    assert not (tmp_path / "drawn").exists() or not any((tmp_path / "drawn").iterdir())


# --------------------------------------------------------------------------- items 4, 6, 13: train_net

@pytest.fixture
def training(tmp_path, train_net, monkeypatch):
    """train_net.train with the data loader and the loop replaced by recorders."""
    loops = []
    monkeypatch.setattr(train_net, "make_data_loader", lambda *args, **kwargs: [])

    def record_loop(model, data_loader, optimizer, scheduler, checkpointer, device, period, arguments,
                    **kwargs):
        loops.append({"model": model, "optimizer": optimizer, "iteration": arguments["iteration"], **kwargs})

    monkeypatch.setattr(train_net, "do_train", record_loop)
    return loops


def _train_cfg(tmp_path, *extra):
    cfg = _small_config(tmp_path, "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "10", *extra)
    (tmp_path / "out").mkdir(exist_ok=True)
    return cfg


def _checkpoint_at(tmp_path, iteration, *extra):
    """A real checkpoint of the small model at ``iteration``, written by the trainer's checkpointer."""
    from atss_core.solver import make_lr_scheduler, make_optimizer
    from atss_core.utils.checkpoint import DetectronCheckpointer
    cfg = _train_cfg(tmp_path, *extra)
    torch.manual_seed(3)
    model = build_detection_model(cfg)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    train_net = load_tool("train_net")
    DetectronCheckpointer(cfg, model, optimizer, scheduler, cfg.OUTPUT_DIR, save_to_disk=True,
                          settings=train_net.resume_settings(cfg)).save(f"model_{iteration:07d}", iteration=iteration)
    return model.state_dict()


def test_training_resumes_by_default_and_starts_fresh_with_no_resume(tmp_path, train_net, training, caplog):
    saved = _checkpoint_at(tmp_path, 4)
    with caplog.at_level(logging.INFO):
        train_net.train(_train_cfg(tmp_path), local_rank=0, distributed=False)
    assert training[-1]["iteration"] == 4
    _assert_same(training[-1]["model"].state_dict(), saved)
    assert f"Resuming from {tmp_path / 'out' / 'model_0000004.pth'} (iteration 4)" in caplog.text

    train_net.train(_train_cfg(tmp_path), local_rank=0, distributed=False, resume=False)
    assert training[-1]["iteration"] == 0
    assert not torch.equal(training[-1]["model"].state_dict()["rpn.head.cls_logits.weight"],
                           saved["rpn.head.cls_logits.weight"])


def test_resume_at_max_iter_says_so_and_skips_training(tmp_path, train_net, training, caplog):
    saved = _checkpoint_at(tmp_path, 10)
    with caplog.at_level(logging.INFO):
        model, evaluated_at_end = train_net.train(_train_cfg(tmp_path), local_rank=0, distributed=False)
    assert not training  # the loop never ran
    assert not evaluated_at_end  # so the end-of-training evaluation still runs
    _assert_same(model.state_dict(), saved)  # what gets evaluated is the checkpoint
    assert (f"The checkpoint in {tmp_path / 'out'} is at iteration 10, SOLVER.MAX_ITER is 10: nothing left to "
            "train, going on to evaluation") in caplog.text


def test_resume_after_changing_num_classes_is_one_line_naming_the_key(tmp_path, train_net, training):
    _checkpoint_at(tmp_path, 4)
    with pytest.raises(SystemExit) as exit_info:
        train_net.train(_train_cfg(tmp_path, "MODEL.ATSS.NUM_CLASSES", "3"), local_rank=0, distributed=False)
    message = str(exit_info.value.code)
    assert "\n" not in message and message.startswith("error: cannot load weights: cannot resume: ")
    assert "MODEL.ATSS.NUM_CLASSES changed since the checkpoint (5 -> 3)" in message
    assert message.endswith(f"to start fresh in {tmp_path / 'out'} pass --no-resume (or delete its last_checkpoint)")
    assert not training


def test_periodic_evaluation_checks_the_test_set_before_training_even_with_skip_test(tmp_path, train_net, training):
    """--skip-test skips only the end-of-training evaluation; with TEST.EVAL_PERIOD the test set is
    still used, so a bad one must stop the run before the first iteration, not at the first evaluation."""
    argv = ["--config-file", str(QUICKSTART), "--skip-test", *SMALL, "OUTPUT_DIR", str(tmp_path / "out"),
            "DATASETS.TEST", "('coco_2099_val',)", "TEST.EVAL_PERIOD", "5"]
    message = _exit_message(train_net, argv)
    assert "dataset 'coco_2099_val' is not in the catalog" in message
    assert not training
    # Without periodic evaluation, --skip-test never reads the test set.
    train_net.main(argv[:-2] + ["TEST.EVAL_PERIOD", "0"])
    assert len(training) == 1


def test_slow_cpu_dtypes_warn_once_naming_the_key(tmp_path, train_net, training, caplog, monkeypatch):
    """float16 on CPU, and bfloat16 on a CPU without native bfloat16 convolutions, are slower
    than float32: one warning each, naming the key and what to use instead."""
    from atss_core.engine import precision

    def slow_warnings(*opts):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            train_net.train(_train_cfg(tmp_path, *opts), local_rank=0, distributed=False)
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "slower" in r.getMessage()]

    warnings = slow_warnings("DTYPE", "float16")
    assert len(warnings) == 1 and warnings[0].startswith("DTYPE float16 on CPU") and "DTYPE bfloat16" in warnings[0]
    assert training[-1]["autocast_dtype"] is torch.float16
    monkeypatch.setattr(precision, "onednn_has_bfloat16", lambda: True)
    assert slow_warnings("DTYPE", "bfloat16") == []
    monkeypatch.setattr(precision, "onednn_has_bfloat16", lambda: False)
    for key in ("DTYPE", "TEST.DTYPE"):
        warnings = slow_warnings(key, "bfloat16")
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"{key} bfloat16: this CPU has no native bfloat16 convolutions")
        assert warnings[0].endswith("use float32 on this machine")


def test_second_run_in_a_live_runs_output_dir_is_refused(tmp_path, train_net, monkeypatch):
    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(train_net, "train", stop)  # nothing here trains
    monkeypatch.setattr(train_net, "collect_env_info", lambda: "env")
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (output_dir / "train.lock").write_text(f"{live.pid}@{socket.gethostname()}")
        (output_dir / ".model_0000002.pth.99.tmp").write_bytes(b"partial")
        message = _exit_message(train_net, ["--config-file", str(QUICKSTART), *SMALL, "OUTPUT_DIR", str(output_dir)])
        assert message.startswith(f"error: {output_dir} is in use by a running training (pid {live.pid}")
        assert (output_dir / ".model_0000002.pth.99.tmp").exists()  # the live run's file is left alone
    finally:
        live.kill()
        live.wait()

    # Its process gone (kill -9), the next run takes the folder over and removes the partial file.
    monkeypatch.setattr(train_net, "cfg", default_cfg.clone())
    with pytest.raises(Stop):
        train_net.main(["--config-file", str(QUICKSTART), *SMALL, "OUTPUT_DIR", str(output_dir)])
    assert not (output_dir / ".model_0000002.pth.99.tmp").exists()
    assert (output_dir / "train.lock").read_text().startswith(f"{os.getpid()}@{socket.gethostname()}:")


def test_disk_full_while_training_is_one_line(tmp_path, train_net, monkeypatch):
    from atss_core.utils.checkpoint import DiskFullError

    def disk_full(*args, **kwargs):
        raise DiskFullError(28, f"no space left on device while writing {tmp_path / 'model_0000002.pth'}; ...")

    monkeypatch.setattr(train_net, "train", disk_full)
    monkeypatch.setattr(train_net, "collect_env_info", lambda: "env")
    message = _exit_message(train_net, ["--config-file", str(QUICKSTART), *SMALL, "OUTPUT_DIR", str(tmp_path)])
    assert message.startswith(f"error: no space left on device while writing {tmp_path / 'model_0000002.pth'}")


# --------------------------------------------------------------------------- the real command lines

def _environment():
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def test_command_lines_end_with_one_line_naming_the_mistake(tmp_path):
    listed = tmp_path / "listed.yaml"
    listed.write_text("- MODEL\n")
    text_weights = tmp_path / "notes.pth"
    text_weights.write_text("not weights\n")
    cases = [
        (["tools/train_net.py", "--config-file", str(listed)], f"error: config file {listed} holds a yaml list"),
        (["tools/test_net.py", "--config-file", str(QUICKSTART), *SMALL, "OUTPUT_DIR", str(tmp_path),
          "MODEL.WEIGHT", str(text_weights)], f"test_net: weights file {text_weights} is not a "),
    ]
    for argv, expected in cases:
        run = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=_environment(), capture_output=True,
                             text=True, timeout=120)
        output = run.stdout + run.stderr
        assert run.returncode != 0 and "Traceback" not in output, output[-3000:]
        assert output.strip().splitlines()[-1].startswith(expected), output[-3000:]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


STOPPED_RANK = """
import datetime, os, time
import torch.distributed as dist
dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=60))
print("rank 1 joined, now stops", flush=True)
time.sleep(120)
"""


def test_a_stopped_rank_ends_the_job_after_dist_timeout(tmp_path):
    """Rank 0 is train_net; rank 1 joins the process group and then never takes part again.
    With DIST_TIMEOUT 3, rank 0 stops with one line after about 3 s instead of torch's 30 minutes."""
    env = dict(_environment(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    stopped = subprocess.Popen([sys.executable, "-c", STOPPED_RANK], env=dict(env, RANK="1", LOCAL_RANK="1"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        start = time.monotonic()
        run = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", str(QUICKSTART), *SMALL,
                              "DIST_TIMEOUT", "3", "OUTPUT_DIR", str(tmp_path)], cwd=REPO_ROOT,
                             env=dict(env, RANK="0", LOCAL_RANK="0"), capture_output=True, text=True, timeout=90)
        elapsed = time.monotonic() - start
    finally:
        os.killpg(stopped.pid, signal.SIGKILL)
        stopped.communicate()
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines()[-1].startswith(
        "error: process 0 waited DIST_TIMEOUT=3 s for the other processes: one of them is stopped"), output[-3000:]
    assert elapsed < 60  # start-up on a busy machine plus 3 s; torch's default would wait 1800 s
    print(f"job with a stopped rank ended after {elapsed:.1f} s")
