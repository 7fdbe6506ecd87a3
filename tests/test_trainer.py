"""The training loop: exact resume, mixed precision, logging, non-finite losses, train_net."""
import gc
import logging
import os
import re
import statistics
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from atss_core.config import cfg as default_cfg
from atss_core.engine.trainer import do_train
from atss_core.solver import make_grad_scaler, make_lr_scheduler, make_optimizer
from atss_core.utils.checkpoint import Checkpointer
from atss_core.utils.checkpoint_retention import remove_old_periodic_checkpoints
from atss_core.utils.comm import no_buffer_sync_option
from atss_core.utils.events import MetricsWriter, read_metrics
from atss_core.utils.metric_logger import MetricLogger, SmoothedValue
from conftest import DEVICES, REPO_ROOT, load_tool

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tensors here are tiny: extra threads only add synchronisation on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyDetector(nn.Module):
    """A few-parameter stand-in with the detector's interface: ``model(images, targets)``
    returns a dict of losses. Targets are (5,) tensors: a box (4) and a class label."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8),
                                      nn.ReLU())
        self.cls_logits = nn.Conv2d(8, num_classes, 1)
        self.bbox_pred = nn.Conv2d(8, 4, 1)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images, targets):
        features = self.backbone(images)
        logits = self.cls_logits(features).mean((2, 3))
        boxes = self.bbox_pred(features).mean((2, 3)) * self.scale
        targets = torch.stack(targets)
        return {"loss_cls": F.cross_entropy(logits.float(), targets[:, 4].long()),
                "loss_reg": F.smooth_l1_loss(boxes.float(), targets[:, :4])}


class FileNames:
    """Dataset stand-in that knows its images' file names."""

    def get_img_info(self, index):
        return {"file_name": f"img_{index:03d}.jpg"}


class SyntheticLoader:
    """Iteration-based loader like the real one: ``len`` is MAX_ITER and iteration starts
    at ``start_iter``. Batch k depends only on k, so an interrupted run sees the same data.

    ``crash_after`` raises _Interrupted when batch ``crash_after`` is requested (i.e. after
    that many iterations completed); ``poison_at`` puts a NaN into that iteration's batch.
    """

    dataset = FileNames()

    def __init__(self, max_iter, start_iter=0, crash_after=None, poison_at=None, rank=0):
        self.max_iter, self.start_iter = max_iter, start_iter
        self.crash_after, self.poison_at = crash_after, poison_at
        self.rank = rank  # each process of a distributed run gets its own batches

    def __len__(self):
        return self.max_iter

    def __iter__(self):
        for index in range(self.start_iter, self.max_iter):
            if index == self.crash_after:
                raise _Interrupted
            generator = torch.Generator().manual_seed(index + 100_000 * self.rank)
            images = torch.randn(2, 3, 8, 8, generator=generator)
            # Learnable targets: the brightest channel is the class, the box follows the
            # channel means.
            channel_means = images.mean((2, 3))
            labels = channel_means.argmax(1, keepdim=True).float()
            boxes = torch.cat([channel_means, channel_means[:, :1] - channel_means[:, 1:2]], 1)
            if index + 1 == self.poison_at:
                images[1, 0, 0, 0] = float("nan")
            targets = list(torch.cat([boxes, labels], dim=1))
            yield images, targets, [2 * index, 2 * index + 1]


class _Interrupted(Exception):
    pass


def _config(dtype="float32", device="cpu"):
    cfg = default_cfg.clone()
    cfg.merge_from_list(["MODEL.DEVICE", device, "SOLVER.BASE_LR", 0.05,
                         "SOLVER.WEIGHT_DECAY", 1e-4, "SOLVER.STEPS", (4,),
                         "SOLVER.WARMUP_ITERS", 2, "SOLVER.WARMUP_METHOD", "linear"])
    if dtype != "float32":
        cfg.DTYPE = dtype  # proposed key; set directly while defaults.py lacks it
    return cfg


def _trainer_parts(cfg, save_dir, seed):
    torch.manual_seed(seed)
    model = TinyDetector().to(cfg.MODEL.DEVICE)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    scaler = make_grad_scaler(cfg)
    checkpointer = Checkpointer(model, optimizer, scheduler, str(save_dir), save_to_disk=True,
                                scaler=scaler)
    return model, optimizer, scheduler, scaler, checkpointer


class HeldOutEvaluator:
    """Stand-in for the periodic COCO evaluation: "bbox/AP" is minus the loss on held-out
    batches (higher is better), computed in eval mode. Each call records whether the model
    was in train mode when called (nothing but do_train puts it back after an evaluation)."""

    def __init__(self):
        self.was_training = []

    def __call__(self, model):
        self.was_training.append(model.training)
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            loss = sum(sum(model(images.to(device), [t.to(device) for t in targets]).values())
                       for images, targets, _ in SyntheticLoader(1003, start_iter=1000))
        return {"bbox/AP": -loss.item(), "bbox/AP-circle": -loss.item() / 2}


def _train(cfg, save_dir, loader, seed=0, checkpoint_period=3, observed=False, evaluator=None):
    """``observed``: with metrics.json, evaluation every 2 iterations (``evaluator``), a log
    row every 2 iterations and only the newest periodic checkpoint kept."""
    model, optimizer, scheduler, scaler, checkpointer = _trainer_parts(cfg, save_dir, seed)
    arguments = {"iteration": 0}
    arguments.update(checkpointer.load())
    loader.start_iter = arguments["iteration"]
    dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        cfg.get("DTYPE", "float32")]
    options = {}
    if observed:
        options = dict(log_period=2, eval_period=2, checkpoint_keep=1,
                       evaluator=evaluator or HeldOutEvaluator(),
                       metrics_writer=MetricsWriter(str(save_dir), arguments["iteration"],
                                                    tensorboard=False))
    try:
        do_train(model, loader, optimizer, scheduler, checkpointer,
                 torch.device(cfg.MODEL.DEVICE), checkpoint_period, arguments, scaler=scaler,
                 autocast_dtype=dtype, **options)
    finally:
        if observed:
            options["metrics_writer"].close()
    return model, optimizer, scheduler, scaler, arguments


@pytest.mark.parametrize("observed", [False, True], ids=["plain", "observed"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_resume_is_exact(dtype, device, observed, tmp_path):
    """Bit for bit on CPU; on CUDA up to the non-determinism of some GPU kernels. "observed"
    adds metrics.json, evaluation with model_best and CHECKPOINT_KEEP, which must not change
    the result, write each iteration's rows once, and keep the newest checkpoint only."""
    same = torch.equal if device == "cpu" else (
        lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-7))
    cfg = _config(dtype, device)
    max_iter = 7
    full_evaluator = HeldOutEvaluator()
    full = _train(cfg, tmp_path / "full", SyntheticLoader(max_iter), observed=observed,
                  evaluator=full_evaluator)

    # Killed after iteration 4 (last checkpoint at 3, or model_best at 4), then restarted
    # from scratch (different initial weights, to show everything comes from the checkpoint).
    with pytest.raises(_Interrupted):
        _train(cfg, tmp_path / "resumed", SyntheticLoader(max_iter, crash_after=4),
               observed=observed)
    last_saved = (tmp_path / "resumed" / "last_checkpoint").read_text()
    assert last_saved.endswith("model_0000003.pth" if not observed else ".pth")
    resumed = _train(cfg, tmp_path / "resumed", SyntheticLoader(max_iter), seed=1,
                     observed=observed)

    (model_a, optimizer_a, scheduler_a, scaler_a, arguments_a) = full
    (model_b, optimizer_b, scheduler_b, scaler_b, arguments_b) = resumed
    assert arguments_a == arguments_b
    assert arguments_a["iteration"] == max_iter
    for (name, param_a), param_b in zip(model_a.named_parameters(), model_b.parameters()):
        assert same(param_a, param_b), name
    for state_a, state_b in zip(optimizer_a.state.values(), optimizer_b.state.values()):
        assert same(state_a["momentum_buffer"], state_b["momentum_buffer"])
    assert scheduler_a.state_dict() == scheduler_b.state_dict()
    assert scheduler_b.last_epoch == max_iter
    assert scaler_a.state_dict() == scaler_b.state_dict()

    # The lr went through warm-up and the step at 4: 0.05 * 0.1 for weights at the end.
    assert optimizer_b.param_groups[0]["lr"] == pytest.approx(0.005)
    files = sorted(path.name for path in (tmp_path / "full").iterdir())
    final = torch.load(tmp_path / "full" / "model_final.pth", weights_only=True)
    assert final["iteration"] == max_iter
    if dtype == "float16":
        assert final["scaler"]["scale"] == scaler_a.get_scale()
    else:
        assert "scaler" not in final
    if not observed:
        assert arguments_a == {"iteration": max_iter}
        assert files == ["last_checkpoint", "model_0000003.pth", "model_0000006.pth",
                         "model_final.pth"]
        return

    assert files == ["last_checkpoint", "metrics.json", "model_0000006.pth", "model_best.pth",
                     "model_final.pth"]
    assert full_evaluator.was_training == [True] * 4  # evaluated at 2, 4, 6, 7; train mode after
    assert model_a.training and model_b.training
    rows = {run: read_metrics(tmp_path / run / "metrics.json") for run in ("full", "resumed")}
    for run_rows in rows.values():
        train_rows = [row for row in run_rows if "loss" in row]
        eval_rows = [row for row in run_rows if "bbox/AP" in row]
        assert [row["iteration"] for row in train_rows] == [2, 4, 6, 7]
        assert [row["iteration"] for row in eval_rows] == [2, 4, 6, 7]
        expected = {"iteration", "loss", "loss_cls", "loss_reg", "lr", "time", "data_time"}
        if device == "cuda":
            expected.add("max_mem")
        assert all(set(row) == expected for row in train_rows)
    # The evaluations see the same weights; the lr of each logged iteration is exact.
    assert [r.get("lr") for r in rows["full"]] == [r.get("lr") for r in rows["resumed"]]
    aps = {run: [r["bbox/AP"] for r in run_rows if "bbox/AP" in r] for run, run_rows in rows.items()}
    if device == "cpu":
        assert aps["full"] == aps["resumed"]
    else:
        assert aps["full"] == pytest.approx(aps["resumed"], rel=1e-5)

    # model_best holds the best evaluation's weights, value and iteration.
    eval_rows = [row for row in rows["full"] if "bbox/AP" in row]
    best_row = max(eval_rows, key=lambda row: row["bbox/AP"])
    best = torch.load(tmp_path / "full" / "model_best.pth", weights_only=True)
    assert (best["best_bbox_AP"], best["best_iteration"]) == (best_row["bbox/AP"],
                                                              best_row["iteration"])
    assert best["iteration"] == best_row["iteration"]
    model_a.load_state_dict(best["model"])
    reevaluated = HeldOutEvaluator()(model_a)["bbox/AP"]
    assert reevaluated == (best_row["bbox/AP"] if device == "cpu"
                           else pytest.approx(best_row["bbox/AP"], rel=1e-5))


def test_training_reduces_the_loss(tmp_path):
    cfg = _config()
    cfg.SOLVER.STEPS = (1000,)
    model, *_ = _train(cfg, tmp_path, SyntheticLoader(200), checkpoint_period=1000)
    torch.manual_seed(0)
    untrained = TinyDetector()
    held_out = SyntheticLoader(210, start_iter=200)
    with torch.no_grad():
        before = sum(sum(untrained(images, targets).values()) for images, targets, _ in held_out)
        after = sum(sum(model(images, targets).values()) for images, targets, _ in held_out)
    assert after < 0.5 * before


@pytest.mark.parametrize("device", DEVICES)
def test_log_lines_every_20_iterations(device, caplog):
    class ConstantLosses(nn.Module):
        """Loss of iteration k is k (and 2k), whatever the weights."""

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(()))
            self.calls = 0

        def forward(self, images, targets):
            self.calls += 1
            return {"loss_a": self.weight * 0 + self.calls,
                    "loss_b": self.weight * 0 + 2 * self.calls}

    cfg = _config(device=device)
    model = ConstantLosses().to(device)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    with caplog.at_level(logging.INFO, logger="atss_core.trainer"):
        do_train(model, SyntheticLoader(25), optimizer, scheduler,
                 Checkpointer(model), torch.device(device), 100, {"iteration": 0})
    lines = [r.getMessage() for r in caplog.records if "iter: " in r.getMessage()]
    assert len(lines) == 2
    for line, iteration in zip(lines, (20, 25)):
        window = list(range(max(1, iteration - 19), iteration + 1))
        median = statistics.median_low(window)
        mean = sum(range(1, iteration + 1)) / iteration
        fields = line.split("  ")
        assert fields[0].startswith("eta: ")
        assert fields[1] == f"iter: {iteration}"
        assert fields[2] == f"loss: {3 * median:.4f} ({3 * mean:.4f})"
        assert fields[3] == f"loss_a: {median:.4f} ({mean:.4f})"
        assert fields[4] == f"loss_b: {2 * median:.4f} ({2 * mean:.4f})"
        assert fields[5].startswith("time: ") and fields[6].startswith("data: ")
        lr_field = f"lr: {0.05 * 0.1:.6f}"
        if device == "cuda":
            assert fields[-2] == lr_field and re.fullmatch(r"max mem: \d+", fields[-1])
        else:
            assert fields[-1] == lr_field and "max mem" not in line
    assert any(r.getMessage().startswith("Total training time: ") for r in caplog.records)


def test_non_finite_loss_stops_with_iteration_and_images(tmp_path):
    cfg = _config()
    model, optimizer, scheduler, scaler, checkpointer = _trainer_parts(cfg, tmp_path, 0)
    arguments = {"iteration": 0}
    loader = SyntheticLoader(10, poison_at=3)
    weights_after_2 = {}

    class Snapshot(Checkpointer):
        def save(self, name, **kwargs):
            weights_after_2.update({k: v.clone() for k, v in model.state_dict().items()})

    with pytest.raises(FloatingPointError) as error:
        do_train(model, loader, optimizer, scheduler, Snapshot(model), CPU, 2, arguments)
    message = str(error.value)
    assert "\n" not in message
    assert "non-finite loss at iteration 3" in message
    assert "dataset indices [4, 5]" in message and "img_005.jpg" in message
    assert arguments["iteration"] == 3
    for key, value in model.state_dict().items():  # the bad batch changed nothing
        assert torch.equal(value, weights_after_2[key]), key


def _ddp_worker(rank, world_size, tmp_dir):
    """One process of a 2-process gloo run: 6 clean iterations, then a run where only
    rank 1 meets a NaN. Writes its final weights, or its error, to rank<r>.pt."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_dir}/rendezvous", rank=rank,
                            world_size=world_size)
    torch.set_num_threads(1)
    cfg = _config()
    torch.manual_seed(0)
    model = TinyDetector()
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    ddp_model = nn.parallel.DistributedDataParallel(model, **no_buffer_sync_option())
    checkpointer = Checkpointer(ddp_model, optimizer, scheduler, f"{tmp_dir}/out",
                                save_to_disk=rank == 0)
    do_train(ddp_model, SyntheticLoader(6, rank=rank), optimizer, scheduler, checkpointer, CPU,
             3, {"iteration": 0})
    result = {"weights": {k: v.clone() for k, v in model.state_dict().items()}}
    poisoned = SyntheticLoader(6, poison_at=3 if rank == 1 else None, rank=rank)
    try:
        do_train(ddp_model, poisoned, optimizer, scheduler, Checkpointer(ddp_model), CPU, 100,
                 {"iteration": 0})
    except FloatingPointError as error:
        result["error"] = str(error)
    torch.save(result, f"{tmp_dir}/rank{rank}.pt")
    # Tear down in a fixed order while the interpreter is whole: DDP holds the process group,
    # so it goes first, and no rank leaves before both are done. Then skip interpreter
    # finalization, where gloo's threads were seen to abort the process now and then
    # ("terminate called without an active exception") after everything had been written.
    del ddp_model, checkpointer
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _BothRanksLoader(SyntheticLoader):
    """Single-process equivalent of the 2-process run: both ranks' batches at once."""

    def __iter__(self):
        rank_batches = zip(SyntheticLoader(self.max_iter, rank=0),
                           SyntheticLoader(self.max_iter, rank=1))
        for (images_0, targets_0, ids_0), (images_1, targets_1, ids_1) in rank_batches:
            yield torch.cat([images_0, images_1]), targets_0 + targets_1, ids_0 + ids_1


def test_distributed_training_matches_single_process_and_stops_together(tmp_path):
    context = mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:  # a hang means the ranks went out of step
            for process in context.processes:
                process.kill()
            pytest.fail("distributed training hung")
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]

    cfg = _config()
    torch.manual_seed(0)
    model = TinyDetector()
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    do_train(model, _BothRanksLoader(6), optimizer, scheduler, Checkpointer(model), CPU, 100,
             {"iteration": 0})
    for key, value in model.state_dict().items():
        assert torch.equal(results[0]["weights"][key], results[1]["weights"][key]), key
        torch.testing.assert_close(results[0]["weights"][key], value, rtol=1e-5, atol=1e-6)

    # Only rank 0 wrote, with the DDP "module." prefix of the published checkpoints.
    files = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert files == ["last_checkpoint", "model_0000003.pth", "model_0000006.pth",
                     "model_final.pth"]
    saved = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    assert all(key.startswith("module.") for key in saved["model"])

    # The NaN on rank 1 stops both processes at the same iteration.
    assert "non-finite loss at iteration 3 (rank 1: loss_cls=nan" in results[1]["error"]
    assert "non-finite loss at iteration 3 (rank 0: " in results[0]["error"]


def test_smoothed_value_and_metric_logger():
    value = SmoothedValue(window_size=3)
    for number in (5, 1, 4, 2):
        value.update(number)
    assert value.median == 2  # lower median of the window [1, 4, 2]
    assert value.avg == pytest.approx(7 / 3)
    assert value.global_avg == pytest.approx(3.0)
    meters = MetricLogger(delimiter="|")
    meters.update(loss=torch.tensor(1.5), time=0.25)
    assert str(meters) == "loss: 1.5000 (1.5000)|time: 0.2500 (0.2500)"
    assert meters.loss.count == 1
    with pytest.raises(AttributeError, match="no attribute or meter 'nope'"):
        meters.nope
    with pytest.raises(TypeError, match="metric bad"):
        meters.update(bad="x")


# --------------------------------------------------------------------------- train_net

def _train_net():
    """tools/train_net.py as a module (its imports of atss_core must work)."""
    return load_tool("train_net")


def test_train_net_config_errors_are_one_line(tmp_path, monkeypatch):
    train_net = _train_net()
    config = REPO_ROOT / "configs" / "atss" / "atss_R_50_FPN_1x.yaml"
    cases = [
        ([], "no config file given"),
        (["--config-file", str(tmp_path / "missing.yaml")], "missing.yaml' not found; pass an existing yaml with --config-file"),
        (["--config-file", str(config), "SOLVER.NOT_A_KEY", "1"], "SOLVER.NOT_A_KEY"),
        (["--config-file", str(config), "SOLVER.BASE_LR"], "odd length"),
        (["--config-file", str(config), "SOLVER.BASE_LR", "fast"], "Type mismatch"),
    ]
    for argv, expected in cases:
        monkeypatch.setattr(train_net, "cfg", default_cfg.clone())
        with pytest.raises(SystemExit) as exit_info:
            train_net.main(argv)
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and expected in message and "\n" not in message


def test_train_net_flags(monkeypatch):
    train_net = _train_net()
    args = train_net.parse_args(["--config-file", "x.yaml", "--local-rank", "3", "--skip-test",
                                 "SOLVER.MAX_ITER", "10"])
    assert (args.config_file, args.local_rank, args.skip_test) == ("x.yaml", 3, True)
    assert args.opts == ["SOLVER.MAX_ITER", "10"]
    assert train_net.parse_args(["--local_rank=1"]).local_rank == 1


def test_logger_hides_debug_lines_until_one_module_asks_for_them(tmp_path):
    import logging

    from atss_core.utils.logger import setup_logger
    logger = setup_logger("atss_core", str(tmp_path), 0)
    assigner_logger = logging.getLogger("atss_core.modeling.rpn.atss.assigners")
    try:
        assigner_logger.debug("hidden debug line")
        logger.info("info line")
        assigner_logger.setLevel(logging.DEBUG)
        assigner_logger.debug("requested debug line")
    finally:
        assigner_logger.setLevel(logging.NOTSET)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    text = (tmp_path / "log.txt").read_text()
    assert "info line" in text and "requested debug line" in text and "hidden debug line" not in text


@pytest.mark.parametrize("main_process", [True, False])
def test_only_rank_0_writes_config_and_collects_the_env_report(tmp_path, monkeypatch, main_process):
    """Ranks share OUTPUT_DIR: one writer for config.yml, and the seconds-long env report is
    gathered only where it is printed."""
    train_net = _train_net()
    monkeypatch.setattr(train_net, "cfg", default_cfg.clone())
    monkeypatch.setattr(train_net, "is_main_process", lambda: main_process)
    env_reports = []
    monkeypatch.setattr(train_net, "collect_env_info", lambda: env_reports.append(1) or "env")

    class Stop(Exception):
        pass

    def stop_before_training(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(train_net, "train", stop_before_training)
    monkeypatch.setattr(train_net, "check_test_datasets", lambda cfg: None)  # COCO is not here
    config = REPO_ROOT / "configs" / "atss" / "atss_R_50_FPN_1x.yaml"
    with pytest.raises(Stop):
        train_net.main(["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "out")])
    assert (tmp_path / "out" / "config.yml").exists() == main_process
    assert len(env_reports) == int(main_process)


def test_checkpoint_keep_spares_final_best_and_the_resume_file(tmp_path):
    names = ["model_0000010.pth", "model_0000020.pth", "model_0000030.pth", "model_0000040.pth",
             "model_final.pth", "model_best.pth", "model_0000050.pth.123.tmp", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    # last_checkpoint names an older periodic file (e.g. the newer ones were copied in).
    removed = remove_old_periodic_checkpoints(str(tmp_path), 2, str(tmp_path / "model_0000010.pth"))
    assert removed == ["model_0000020.pth"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        set(names) - {"model_0000020.pth"})
    assert remove_old_periodic_checkpoints(str(tmp_path), 0) == []  # 0 keeps all


def test_metrics_writer_drops_rows_after_the_resume_point_and_never_repeats_one(tmp_path):
    writer = MetricsWriter(str(tmp_path), 0, tensorboard=False)
    for iteration in (5, 10, 15):
        writer.write(iteration, {"loss": iteration / 10})
    writer.write(10, {"bbox/AP": 0.25})
    writer.close()
    with open(tmp_path / "metrics.json", "a") as stream:
        stream.write('{"iteration": 20, "lo')  # killed while writing
    writer = MetricsWriter(str(tmp_path), 10, tensorboard=False)  # resumed from iteration 10
    writer.write(15, {"loss": 1.25})
    writer.write(10, {"bbox/AP": 0.5})  # the same evaluation again: not written twice
    writer.close()
    assert read_metrics(tmp_path / "metrics.json") == [
        {"iteration": 5, "loss": 0.5}, {"iteration": 10, "loss": 1.0},
        {"iteration": 10, "bbox/AP": 0.25}, {"iteration": 15, "loss": 1.25}]
    assert all(line.endswith("}") for line in (tmp_path / "metrics.json").read_text().splitlines())


def test_evaluation_time_is_not_counted_as_data_loading_time(caplog):
    """An evaluation after every iteration that takes 0.5 s: without care, the next
    iteration's data time would include it (global average >= 0.33 s over 3 iterations)."""
    cfg = _config()
    model = TinyDetector()
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)

    def slow_evaluator(model):
        time.sleep(0.5)
        return {}

    with caplog.at_level(logging.INFO, logger="atss_core.trainer"):
        do_train(model, SyntheticLoader(3), optimizer, scheduler, Checkpointer(model), CPU, 100,
                 {"iteration": 0}, evaluator=slow_evaluator, eval_period=1)
    [line] = [r.getMessage() for r in caplog.records if "iter: 3" in r.getMessage()]
    data_average = float(re.search(r"data: [\d.]+ \(([\d.]+)\)", line).group(1))
    assert data_average < 0.2, line
