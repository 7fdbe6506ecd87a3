"""What a training run leaves to look at: metrics.json, TensorBoard events, periodic evaluation
with model_best, bounded checkpoints, the evaluation report, test_net's own folder, and the
curves of tools/plot_metrics.py.

One 40-iteration quick-start run (shrunk: 8 training and 4 validation images of 160x160, shown
at 128 px) with ``TEST.EVAL_PERIOD 20 SOLVER.CHECKPOINT_PERIOD 10 SOLVER.CHECKPOINT_KEEP 2
SOLVER.LOG_PERIOD 5``, run as the user runs it: ``python tools/train_net.py``. That the same
options keep a killed and resumed run bit-identical is tested in tests/test_trainer.py.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from atss_core.data.datasets.synthetic_shapes import CLASS_NAMES, write_split
from atss_core.utils.events import read_metrics
from conftest import REPO_ROOT, load_tool

CONFIG = "configs/quickstart/atss_mnv2_fpn_shapes.yaml"
MAX_ITER = 40


def _coco_name(root, split):
    return f"coco:{root / split}:{root / 'annotations' / f'instances_{split}.json'}"


def _options(data, output_dir):
    return ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
            "SOLVER.IMS_PER_BATCH", "2", "TEST.IMS_PER_BATCH", "2",
            "SOLVER.WARMUP_ITERS", "5", "SOLVER.STEPS", "(30,)",
            # An untrained model scores below the default 0.05: keep every candidate so that
            # the AP is not 0 everywhere.
            "MODEL.ATSS.INFERENCE_TH", "0.0",
            "DATASETS.TRAIN", f"('{_coco_name(data, 'train')}',)",
            "DATASETS.TEST", f"('{_coco_name(data, 'val')}',)",
            "OUTPUT_DIR", str(output_dir)]


def _run(script, args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, script, *args], cwd=REPO_ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    assert run.returncode == 0, run.stdout[-6000:]
    return run.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("observed")
    data = root / "data"
    write_split(data, "train", 8, seed=0, image_size=160)
    write_split(data, "val", 4, seed=0, image_size=160)
    output_dir = root / "out"
    run = {"root": root, "data": data, "out": output_dir,
           "results": output_dir / "inference" / "instances_val"}
    _observed_training(run, output_dir, MAX_ITER)
    run["rows"] = read_metrics(output_dir / "metrics.json")
    return run


def _observed_training(run, output_dir, max_iter):
    return _run("tools/train_net.py", [
        "--config-file", CONFIG, *_options(run["data"], output_dir), "SOLVER.MAX_ITER", str(max_iter),
        "TEST.EVAL_PERIOD", "20", "SOLVER.CHECKPOINT_PERIOD", "10", "SOLVER.CHECKPOINT_KEEP", "2",
        "SOLVER.LOG_PERIOD", "5"])


def test_stopped_and_resumed_run_ends_bit_identical(run):
    """Stopped after 20 iterations (an evaluation, model_best and a pruned checkpoint included),
    then resumed to 40: the same weights, evaluations and lr as the uninterrupted run."""
    output_dir = run["root"] / "resumed"
    _observed_training(run, output_dir, 20)
    _observed_training(run, output_dir, MAX_ITER)
    resumed = torch.load(output_dir / "model_final.pth", weights_only=True)
    full = torch.load(run["out"] / "model_final.pth", weights_only=True)
    assert resumed["iteration"] == full["iteration"] == MAX_ITER
    for key, value in full["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    rows = read_metrics(output_dir / "metrics.json")
    assert ([(row["iteration"], row.get("bbox/AP"), row.get("lr")) for row in rows]
            == [(row["iteration"], row.get("bbox/AP"), row.get("lr")) for row in run["rows"]])


def test_default_run_records_its_end_of_training_evaluation_and_keeps_every_checkpoint(run):
    """No new option set: no model_best, no checkpoint removed, and the evaluation after
    training (the folded fast path, as before) still gets its metrics.json row."""
    output_dir = run["root"] / "defaults"
    _run("tools/train_net.py", ["--config-file", CONFIG, *_options(run["data"], output_dir),
                                "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1"])
    assert sorted(path.name for path in output_dir.glob("*.pth")) == [
        "model_0000001.pth", "model_0000002.pth", "model_0000003.pth", "model_0000004.pth",
        "model_final.pth"]
    rows = read_metrics(output_dir / "metrics.json")
    assert [row["iteration"] for row in rows] == [4, 4]  # the log row (LOG_PERIOD 20), then AP
    scores = json.loads((output_dir / "inference" / "instances_val" / "coco_results.json").read_text())
    assert {key: value for key, value in rows[1].items() if key != "iteration"} == {
        f"bbox/{name}": value for name, value in scores["bbox"].items() if value != -1}


def test_metrics_json_has_a_row_per_logged_iteration_and_evaluation(run):
    train_rows = [row for row in run["rows"] if "loss" in row]
    eval_rows = [row for row in run["rows"] if "bbox/AP" in row]
    assert len(train_rows) + len(eval_rows) == len(run["rows"])
    assert [row["iteration"] for row in train_rows] == list(range(5, MAX_ITER + 1, 5))
    assert [row["iteration"] for row in eval_rows] == [20, 40]
    log = (run["out"] / "log.txt").read_text()
    for row in train_rows:  # CPU run: no max_mem
        assert set(row) == {"iteration", "loss", "loss_cls", "loss_reg", "loss_centerness", "lr",
                            "time", "data_time"}
        # The log line of that iteration prints the same window medians.
        [line] = [line for line in log.splitlines() if f"iter: {row['iteration']} " in line]
        for name in ("loss", "loss_cls", "loss_reg", "loss_centerness"):
            assert f"{name}: {row[name]:.4f} (" in line
        assert f"time: {row['time']:.4f} (" in line and f"data: {row['data_time']:.4f} (" in line
        # lr after the iteration: warm-up is over at 5, x0.1 from the step at 30 on.
        assert row["lr"] == pytest.approx(0.01 if row["iteration"] < 30 else 0.001)

    # The last evaluation's row holds what coco_results.json holds (scored metrics only; a
    # COCO -1 means no ground truth in that size range).
    final = json.loads((run["results"] / "coco_results.json").read_text())["bbox"]
    assert {key: value for key, value in eval_rows[-1].items() if key != "iteration"} == {
        f"bbox/{name}": value for name, value in final.items() if value != -1}
    for name in ("AP", "AP50", "AP75", "APs", "APm", "AR1", "AR10", "AR100"):
        assert f"bbox/{name}" in eval_rows[0]
    assert {f"bbox/AP-{name}" for name in CLASS_NAMES} <= set(eval_rows[0])
    assert eval_rows[0]["bbox/AP"] != eval_rows[1]["bbox/AP"]  # evaluated twice, not copied


def test_tensorboard_events_hold_the_same_scalars(run):
    [events_file] = run["out"].glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events_file))
    accumulator.Reload()
    for key in ("loss", "loss_cls", "lr", "bbox/AP", "bbox/AP-circle"):
        rows = [row for row in run["rows"] if key in row]
        events = accumulator.Scalars(key)
        assert [event.step for event in events] == [row["iteration"] for row in rows]
        np.testing.assert_allclose([event.value for event in events],
                                   [row[key] for row in rows], rtol=1e-6)


def test_checkpoints_are_bounded_and_model_best_is_the_best_evaluation(run):
    out = run["out"]
    checkpoints = sorted(path.name for path in out.glob("*.pth"))
    assert checkpoints == ["model_0000030.pth", "model_0000040.pth", "model_best.pth",
                           "model_final.pth"]
    assert (out / "last_checkpoint").read_text().strip().endswith("model_final.pth")
    eval_rows = [row for row in run["rows"] if "bbox/AP" in row]
    best_row = max(eval_rows, key=lambda row: row["bbox/AP"])
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert best["best_bbox_AP"] == best_row["bbox/AP"]
    assert best["best_iteration"] == best["iteration"] == best_row["iteration"]
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert (final["best_bbox_AP"], final["best_iteration"]) == (best["best_bbox_AP"],
                                                                best["best_iteration"])
    log = (out / "log.txt").read_text()
    assert f"New best bbox/AP {eval_rows[0]['bbox/AP']:.4f} at iteration 20" in log


def test_the_log_has_ap_ar_and_per_class_tables(run):
    log = (run["out"] / "log.txt").read_text()
    final = json.loads((run["results"] / "coco_results.json").read_text())["bbox"]
    assert re.search(r"^ +AP +AP50 +AP75 +APs +APm +APl$", log, re.MULTILINE)
    assert re.search(r"^ +AR1 +AR10 +AR100 +ARs +ARm +ARl$", log, re.MULTILINE)
    for name in CLASS_NAMES:
        assert re.search(rf"^{name} +{final[f'AP-{name}']:.3f}$", log, re.MULTILINE), name
    assert " loaded from " not in log  # the per-key weight list is DEBUG only


def test_test_net_keeps_the_training_evaluation_unless_it_evaluates_the_same_weights(run):
    out, results = run["out"], run["results"]
    training_files = {path.name: path.read_bytes() for path in results.iterdir()}
    options = _options(run["data"], out)
    _run("tools/test_net.py", ["--config-file", CONFIG, "--ckpt", str(out / "model_best.pth"),
                               *options])
    assert {path.name: path.read_bytes() for path in results.iterdir()} == training_files
    best_folder = out / "inference_model_best"
    best_scores = json.loads((best_folder / "instances_val" / "coco_results.json").read_text())
    # The fast inference path (folded norms) scores model_best as the training run did.
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert best_scores["bbox"]["AP"] == pytest.approx(best["best_bbox_AP"], abs=2e-3)
    assert "Evaluation results:" in (best_folder / "log.txt").read_text()

    # The run's own final weights: the same folder as the end-of-training evaluation.
    _run("tools/test_net.py", ["--config-file", CONFIG, *options])  # via last_checkpoint
    assert (out / "inference" / "log.txt").exists()
    final_scores = json.loads((results / "coco_results.json").read_text())["bbox"]
    training_scores = json.loads(training_files["coco_results.json"])["bbox"]
    assert final_scores["AP"] == pytest.approx(training_scores["AP"], abs=2e-3)
    assert "Evaluation results:" not in (out / "log.txt").read_text().split("Total training time")[1]


def _plot_metrics():
    return load_tool("plot_metrics")


def test_plot_metrics_draws_the_runs_curves(run, tmp_path, capsys):
    plot_metrics = _plot_metrics()
    second = tmp_path / "second"  # a second run: the same rows, losses doubled
    second.mkdir()
    doubled = [{key: value * 2 if key.startswith("loss") else value for key, value in row.items()}
               for row in run["rows"]]
    (second / "metrics.json").write_text("".join(json.dumps(row) + "\n" for row in doubled))
    png = tmp_path / "curves.png"
    plot_metrics.main([str(run["out"]), str(second), "--output", str(png)])
    assert "6 panels for 2 runs" in capsys.readouterr().out

    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1500, 720)  # 3 x 2 panels of 5 x 3.6 in
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # Both runs' colours (matplotlib's C0 blue and C1 orange) are drawn.
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels.astype(int) - colour).sum(1) < 30).sum() > 500, colour

    runs = [("out", run["rows"]), ("second", doubled)]
    figure = plot_metrics.plot_metrics(runs, ["loss", "lr", "bbox/AP"], smooth=3)
    loss_axes, lr_axes, ap_axes = figure.axes
    assert [axes.get_title() for axes in figure.axes] == ["loss", "lr", "bbox/AP"]
    assert all(axes.get_xlabel() == "iteration" for axes in figure.axes)
    assert lr_axes.get_ylabel() == "learning rate" and ap_axes.get_ylabel() == "bbox/AP (0-1)"
    losses = [row["loss"] for row in run["rows"] if "loss" in row]
    raw, smoothed = loss_axes.lines[:2]  # the first run's raw and smoothed loss
    np.testing.assert_allclose(raw.get_ydata(), losses)
    np.testing.assert_allclose(smoothed.get_ydata()[2:],
                               [np.mean(losses[i - 2:i + 1]) for i in range(2, len(losses))])
    np.testing.assert_allclose(loss_axes.lines[3].get_ydata()[0], np.mean(losses[:1]) * 2)
    assert [text.get_text() for text in ap_axes.get_legend().get_texts()] == ["out", "second"]
    assert list(ap_axes.lines[0].get_xdata()) == [20, 40]


def test_plot_metrics_errors_are_one_line(run, tmp_path):
    plot_metrics = _plot_metrics()
    png = str(tmp_path / "x.png")
    for argv, expected in (([str(tmp_path), "--output", png], "metrics.json not found"),
                           ([str(run["out"]), "--keys", "nope", "--output", png], "no run has nope"),
                           ([str(run["out"]), "--output", str(tmp_path / "no" / "x.png")],
                            "cannot write")):
        with pytest.raises(SystemExit) as exit_info:
            plot_metrics.main(argv)
        message = str(exit_info.value.code)
        assert expected in message and "\n" not in message
