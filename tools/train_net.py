r"""Train an ATSS detector, then evaluate it on DATASETS.TEST.

Single process::

    python tools/train_net.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        SOLVER.IMS_PER_BATCH 2 OUTPUT_DIR output/atss_r50

Several processes (one per GPU, or CPU processes with the gloo backend)::

    torchrun --nproc_per_node 8 tools/train_net.py --config-file ... [KEY VALUE ...]

Training resumes from OUTPUT_DIR/last_checkpoint when it exists.
"""
import argparse
import os
import pickle
import sys

import torch
import torch.distributed as dist

from atss_core.config import cfg
from atss_core.data import DataError, make_data_loader
from atss_core.data.build import check_test_datasets
from atss_core.data.errors import one_line_message
from atss_core.engine.launch import init_distributed, load_config, run_test
from atss_core.engine.trainer import do_train
from atss_core.modeling.detector import build_detection_model
from atss_core.solver import (make_grad_scaler, make_lr_scheduler, make_optimizer,
                              resolve_autocast_dtype)
from atss_core.utils.checkpoint import DetectronCheckpointer
from atss_core.utils.collect_env import collect_env_info
from atss_core.utils.comm import get_rank, is_main_process
from atss_core.utils.logger import setup_logger
from atss_core.utils.miscellaneous import mkdir, save_config, seed_all_rng


def train(cfg, local_rank, distributed):
    """Build model, optimizer and data, restore any checkpoint, and run the iterations."""
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
            broadcast_buffers=False,
        )

    arguments = {"iteration": 0}
    checkpointer = DetectronCheckpointer(cfg, model, optimizer, scheduler, cfg.OUTPUT_DIR,
                                         save_to_disk=get_rank() == 0, scaler=scaler)
    try:
        extra_checkpoint_data = checkpointer.load(cfg.MODEL.WEIGHT)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as error:
        raise SystemExit(f"error: cannot load weights: {error}") from None
    arguments.update(extra_checkpoint_data)

    data_loader = make_data_loader(cfg, is_train=True, is_distributed=distributed,
                                   start_iter=arguments["iteration"])
    do_train(model, data_loader, optimizer, scheduler, checkpointer, device,
             cfg.SOLVER.CHECKPOINT_PERIOD, arguments, scaler=scaler,
             autocast_dtype=resolve_autocast_dtype(cfg))
    return model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="PyTorch Object Detection Training")
    parser.add_argument("--config-file", default="", metavar="FILE", type=str,
                        help="path to config file")
    # torch.distributed.launch passes --local-rank (older versions --local_rank);
    # torchrun sets the LOCAL_RANK environment variable instead.
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=int(os.environ.get("LOCAL_RANK", 0)))
    parser.add_argument("--skip-test", dest="skip_test", action="store_true",
                        help="Do not test the final model")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="Modify config options using the command-line")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    num_processes = int(os.environ.get("WORLD_SIZE", 1))
    args.distributed = num_processes > 1
    load_config(cfg, args.config_file, args.opts)

    if args.distributed:
        init_distributed(args.local_rank, torch.device(cfg.MODEL.DEVICE).type)
    # Same seed on every process (DDP starts all replicas from rank 0's weights anyway);
    # the data sampler splits the data between processes.
    seed_all_rng(cfg.get("SEED", 0))

    output_dir = cfg.OUTPUT_DIR
    if output_dir:
        mkdir(output_dir)

    logger = setup_logger("atss_core", output_dir, get_rank())
    logger.info("Using %d processes", num_processes)
    logger.info(args)

    if is_main_process():  # only rank 0 prints; the report takes seconds to collect
        logger.info("Collecting env info (might take some time)")
        logger.info("\n%s", collect_env_info())

    logger.info("Loaded configuration file %s", args.config_file)
    with open(args.config_file) as config_file:
        logger.info("\n%s", config_file.read())
    logger.info("Running with config:\n%s", cfg)
    if output_dir and is_main_process():  # one writer: ranks share OUTPUT_DIR
        config_path = os.path.join(output_dir, "config.yml")
        logger.info("Saving config into: %s", config_path)
        save_config(cfg, config_path)

    try:
        if not args.skip_test:
            check_test_datasets(cfg)  # a bad test set stops the run now, not after training
        model = train(cfg, args.local_rank, args.distributed)
        if not args.skip_test:
            run_test(cfg, model, args.distributed)
    except FloatingPointError as error:
        raise SystemExit(f"error: {error}") from None
    except DataError as error:
        raise SystemExit(f"error: {one_line_message(error)}") from None
    if args.distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
