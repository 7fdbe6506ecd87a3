r"""Train an ATSS detector, then evaluate it on DATASETS.TEST.

Single process::

    python tools/train_net.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        SOLVER.IMS_PER_BATCH 2 OUTPUT_DIR output/atss_r50

Several processes (one per GPU, or CPU processes with the gloo backend)::

    torchrun --nproc_per_node 8 tools/train_net.py --config-file ... [KEY VALUE ...]

Training resumes from OUTPUT_DIR/last_checkpoint when it exists (the log names the file and
iteration); ``--no-resume`` starts fresh in the same folder instead, from MODEL.WEIGHT at
iteration 0. On resume the lr schedule follows the current config (SOLVER.BASE_LR, STEPS,
GAMMA, WARMUP_*, ...), and every such setting that changed since the checkpoint is logged.
One training run at a time may use an OUTPUT_DIR (OUTPUT_DIR/train.lock holds its pid, host
and start time).
OUTPUT_DIR also gets log.txt, metrics.json and TensorBoard events (every SOLVER.LOG_PERIOD
iterations and after each evaluation; see TEST.EVAL_PERIOD, SOLVER.CHECKPOINT_KEEP and
tools/plot_metrics.py).
"""
import argparse
import logging
import os
import pickle
import sys

import torch
import torch.distributed as dist

from atss_core.config import cfg
from atss_core.data import DataError, make_data_loader
from atss_core.data.build import check_test_datasets
from atss_core.data.errors import one_line_message
from atss_core.engine.launch import (check_batch_divides, init_distributed, load_config,
                                     parse_command_line, run_test, stop_on_dist_timeout)
from atss_core.engine.periodic_eval import PeriodicEvaluator, evaluation_metrics
from atss_core.engine.precision import warn_if_slow_on_cpu
from atss_core.engine.trainer import do_train
from atss_core.modeling.detector import build_detection_model
from atss_core.solver import (make_grad_scaler, make_lr_scheduler, make_optimizer,
                              resolve_autocast_dtype)
from atss_core.utils.checkpoint import (DetectronCheckpointer, DiskFullError, OutputDirInUseError,
                                        lock_output_dir, remove_partial_files)
from atss_core.utils.collect_env import collect_env_info
from atss_core.utils.comm import get_rank, is_main_process, no_buffer_sync_option
from atss_core.utils.cpu_memory import log_cpu_memory_setting
from atss_core.utils.events import MetricsWriter
from atss_core.utils.logger import setup_logger
from atss_core.utils.miscellaneous import mkdir, save_config, seed_all_rng

# Saved with every checkpoint; on resume, each one that differs from the current config is
# logged (the run goes on with the current value; see Checkpointer.load).
RESUME_SETTINGS = (
    "MODEL.ATSS.NUM_CLASSES", "SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR",
    "SOLVER.BIAS_LR_FACTOR", "SOLVER.MOMENTUM", "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_BIAS",
    "SOLVER.STEPS", "SOLVER.GAMMA", "SOLVER.WARMUP_FACTOR", "SOLVER.WARMUP_ITERS", "SOLVER.WARMUP_METHOD",
)


def resume_settings(cfg):
    """``{key: value}`` of RESUME_SETTINGS in ``cfg`` (tuples as lists: plain checkpoint data)."""
    settings = {}
    for key in RESUME_SETTINGS:
        value = cfg
        for part in key.split("."):
            value = value[part]
        settings[key] = list(value) if isinstance(value, tuple) else value
    return settings


def check_solver_settings(cfg):
    """Refuse, in one line, schedules that cannot train (the loop would divide by zero or do nothing)."""
    for key in ("MAX_ITER", "CHECKPOINT_PERIOD"):
        if cfg.SOLVER[key] <= 0:
            raise SystemExit(f"error: SOLVER.{key} must be a positive number of iterations, got {cfg.SOLVER[key]}")


def train(cfg, local_rank, distributed, resume=True):
    """Build model, optimizer and data, restore any checkpoint (OUTPUT_DIR/last_checkpoint
    unless ``resume`` is False), and run the iterations. A checkpoint at or past MAX_ITER is
    evaluated without training (logged).

    Returns the model and whether it was evaluated after its last iteration already
    (TEST.EVAL_PERIOD > 0), which makes the end-of-training evaluation unnecessary.
    """
    logger = logging.getLogger("atss_core.trainer")
    device = torch.device(cfg.MODEL.DEVICE)
    if cfg.MODEL.USE_SYNCBN and distributed and device.type == "cpu":
        # torch's SyncBatchNorm raises on CPU tensors at the first forward of every process.
        raise SystemExit("error: MODEL.USE_SYNCBN needs GPUs (torch's SyncBatchNorm has no CPU "
                         "path); set MODEL.USE_SYNCBN False for multi-process CPU training")
    model = build_detection_model(cfg)
    model.to(device)

    if cfg.MODEL.USE_SYNCBN:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    scaler = make_grad_scaler(cfg)

    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[local_rank] if device.type == "cuda" else None,
            output_device=local_rank if device.type == "cuda" else None,
            # FrozenBN buffers never change, so there is nothing to broadcast.
            **no_buffer_sync_option(),
        )

    arguments = {"iteration": 0}
    checkpointer = DetectronCheckpointer(cfg, model, optimizer, scheduler, cfg.OUTPUT_DIR,
                                         save_to_disk=get_rank() == 0, scaler=scaler,
                                         settings=resume_settings(cfg))
    resuming = resume and checkpointer.has_checkpoint()
    try:
        extra_checkpoint_data = checkpointer.load(cfg.MODEL.WEIGHT, use_last_checkpoint=resume)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as error:
        fresh = (f"; to start fresh in {cfg.OUTPUT_DIR} pass --no-resume (or delete its last_checkpoint)"
                 if resuming else "")
        raise SystemExit(f"error: cannot load weights: {error}{fresh}") from None
    arguments.update(extra_checkpoint_data)
    if arguments["iteration"] >= cfg.SOLVER.MAX_ITER:
        logger.warning("The checkpoint in %s is at iteration %d, SOLVER.MAX_ITER is %d: nothing left to "
                       "train, going on to evaluation (raise SOLVER.MAX_ITER to train longer, or pass "
                       "--no-resume to start over)", cfg.OUTPUT_DIR, arguments["iteration"], cfg.SOLVER.MAX_ITER)
        return model, False

    autocast_dtype = resolve_autocast_dtype(cfg)
    for key, name in (("DTYPE", cfg.DTYPE), ("TEST.DTYPE", cfg.TEST.DTYPE)):
        warn_if_slow_on_cpu(logger, name, device, key)
    data_loader = make_data_loader(cfg, is_train=True, is_distributed=distributed,
                                   start_iter=arguments["iteration"])
    start_iter = arguments["iteration"]
    metrics_writer = (MetricsWriter(cfg.OUTPUT_DIR, start_iter)
                      if cfg.OUTPUT_DIR and is_main_process() else None)
    evaluator = PeriodicEvaluator(cfg, distributed) if cfg.TEST.EVAL_PERIOD > 0 else None
    try:
        do_train(model, data_loader, optimizer, scheduler, checkpointer, device,
                 cfg.SOLVER.CHECKPOINT_PERIOD, arguments, scaler=scaler,
                 autocast_dtype=autocast_dtype, log_period=cfg.SOLVER.LOG_PERIOD,
                 metrics_writer=metrics_writer, evaluator=evaluator,
                 eval_period=cfg.TEST.EVAL_PERIOD, checkpoint_keep=cfg.SOLVER.CHECKPOINT_KEEP)
    finally:
        if metrics_writer is not None:
            metrics_writer.close()
    return model, evaluator is not None and arguments["iteration"] > start_iter


def record_test_metrics(cfg, results):
    """Add the end-of-training evaluation to metrics.json and TensorBoard (main process)."""
    if not cfg.OUTPUT_DIR or not is_main_process():
        return
    metrics = evaluation_metrics(cfg.DATASETS.TEST, results)
    if metrics:
        metrics_writer = MetricsWriter(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER)
        metrics_writer.write(cfg.SOLVER.MAX_ITER, metrics)
        metrics_writer.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="PyTorch Object Detection Training")
    parser.add_argument("--config-file", default="", metavar="FILE", type=str,
                        help="path to config file")
    # torch.distributed.launch passes --local-rank (older versions --local_rank);
    # torchrun sets the LOCAL_RANK environment variable instead.
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=int(os.environ.get("LOCAL_RANK", 0)))
    parser.add_argument("--skip-test", dest="skip_test", action="store_true",
                        help="do not evaluate the final model (TEST.EVAL_PERIOD evaluations still run)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start fresh (MODEL.WEIGHT, iteration 0) even when OUTPUT_DIR has a "
                             "last_checkpoint, which is otherwise resumed; later checkpoints replace it")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="Modify config options using the command-line (KEY VALUE pairs)")
    return parse_command_line(parser, sys.argv[1:] if argv is None else argv)


def evaluates(args):
    """Whether this run evaluates on DATASETS.TEST: after training (unless --skip-test, which
    skips only that evaluation) or every TEST.EVAL_PERIOD iterations."""
    return not args.skip_test or cfg.TEST.EVAL_PERIOD > 0


def main(argv=None):
    args = parse_args(argv)
    num_processes = int(os.environ.get("WORLD_SIZE", 1))
    args.distributed = num_processes > 1
    load_config(cfg, args.config_file, args.opts)
    check_solver_settings(cfg)
    check_batch_divides(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", num_processes)
    if evaluates(args):
        check_batch_divides(cfg.TEST.IMS_PER_BATCH, "TEST.IMS_PER_BATCH", num_processes)
    with stop_on_dist_timeout(cfg.DIST_TIMEOUT, args.distributed):
        run(args, num_processes)


def run(args, num_processes):
    """Everything after the config checks: join the process group, train, evaluate."""
    if args.distributed:
        init_distributed(args.local_rank, torch.device(cfg.MODEL.DEVICE).type, cfg.DIST_TIMEOUT)
    # Same seed on every process (DDP starts all replicas from rank 0's weights anyway);
    # the data sampler splits the data between processes.
    seed_all_rng(cfg.SEED)

    output_dir = cfg.OUTPUT_DIR
    removed = []
    if output_dir:
        mkdir(output_dir)
        if is_main_process():  # one lock per job: the ranks share OUTPUT_DIR
            try:
                lock_output_dir(output_dir)
            except OutputDirInUseError as error:
                raise SystemExit(f"error: {error}") from None
            removed = remove_partial_files(output_dir)

    logger = setup_logger("atss_core", output_dir, get_rank())
    logger.info("Using %d processes", num_processes)
    logger.info(args)
    if removed:
        logger.info("Removed %d partial files that an interrupted run left in %s: %s",
                    len(removed), output_dir, ", ".join(removed))

    if is_main_process():  # only rank 0 prints; the report takes seconds to collect
        logger.info("Collecting env info (might take some time)")
        logger.info("\n%s", collect_env_info())
    log_cpu_memory_setting(logger, cfg.MODEL.DEVICE)

    logger.info("Loaded configuration file %s", args.config_file)
    with open(args.config_file) as config_file:
        logger.info("\n%s", config_file.read())
    logger.info("Running with config:\n%s", cfg)
    if output_dir and is_main_process():  # one writer: ranks share OUTPUT_DIR
        config_path = os.path.join(output_dir, "config.yml")
        logger.info("Saving config into: %s", config_path)
        save_config(cfg, config_path)

    try:
        if evaluates(args):
            check_test_datasets(cfg)  # a bad test set stops the run now, not after training
        model, evaluated_at_end = train(cfg, args.local_rank, args.distributed, resume=args.resume)
        if not args.skip_test and not evaluated_at_end:
            record_test_metrics(cfg, run_test(cfg, model, args.distributed))
    except (FloatingPointError, DiskFullError) as error:
        raise SystemExit(f"error: {error}") from None
    except DataError as error:
        raise SystemExit(f"error: {one_line_message(error)}") from None
    if args.distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
