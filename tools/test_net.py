"""Evaluate a trained detector on the config's DATASETS.TEST.

    python tools/test_net.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        MODEL.WEIGHT ATSS_R_50_FPN_1x.pth [KEY VALUE ...]

The weights evaluated are the file named by ``--ckpt`` or by MODEL.WEIGHT on the command line;
without either, the one OUTPUT_DIR/last_checkpoint names (what training left there), and without
that, the config file's MODEL.WEIGHT. The log says which file it is. Every weight of the model
must come from that file.

Multi-process: ``torchrun --nproc_per_node N tools/test_net.py ...`` (WORLD_SIZE > 1 starts a
process group: NCCL on GPUs, Gloo on CPU). Results and a log.txt go to OUTPUT_DIR/inference/<dataset>
for the run's own model_final.pth, else to OUTPUT_DIR/inference_<weights name>/<dataset>.
"""
import argparse
import os
import pickle
import sys

import torch

from atss_core.config import cfg
from atss_core.data import DataError
from atss_core.data.errors import one_line_message
from atss_core.engine.launch import (check_batch_divides, init_distributed, load_config,
                                     parse_command_line, results_folder_name, run_test,
                                     stop_on_dist_timeout)
from atss_core.engine.precision import warn_if_slow_on_cpu
from atss_core.modeling.detector import build_detection_model
from atss_core.utils.checkpoint import DetectronCheckpointer
from atss_core.utils.collect_env import collect_env_info
from atss_core.utils.comm import get_rank, is_main_process
from atss_core.utils.cpu_memory import log_cpu_memory_setting
from atss_core.utils.logger import setup_logger


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ATSS inference and evaluation")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a yaml config file")
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=int(os.environ.get("LOCAL_RANK", 0)),
                        help="this process's GPU (set by the launcher)")
    parser.add_argument("--ckpt", default=None, metavar="PATH",
                        help="checkpoint to evaluate; overrides MODEL.WEIGHT and any last_checkpoint in OUTPUT_DIR")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHT w.pth TEST.IMS_PER_BATCH 2; "
                             "MODEL.WEIGHT given here is evaluated even when OUTPUT_DIR has a last_checkpoint")
    return parse_command_line(parser, sys.argv[1:] if argv is None else argv)


def named_weights(args):
    """The weights file the user named on the command line (--ckpt, else MODEL.WEIGHT among
    the KEY VALUE pairs, the last one winning as in the config), or None."""
    named = [value for key, value in zip(args.opts[0::2], args.opts[1::2]) if key == "MODEL.WEIGHT"]
    return args.ckpt or (named[-1] if named else None)


def check_weights(path):
    """Exit with a one-line message when ``path`` names a local file that does not exist."""
    if path and "://" not in path and not os.path.isfile(path):
        sys.exit(f"test_net: weights file {path!r} not found; pass a checkpoint as MODEL.WEIGHT or --ckpt")


def main(argv=None):
    args = parse_args(argv)
    num_processes = int(os.environ.get("WORLD_SIZE", 1))
    distributed = num_processes > 1
    load_config(cfg, args.config_file, args.opts)
    check_batch_divides(cfg.TEST.IMS_PER_BATCH, "TEST.IMS_PER_BATCH", num_processes)
    with stop_on_dist_timeout(cfg.DIST_TIMEOUT, distributed):
        evaluate(args, distributed, num_processes)


def evaluate(args, distributed, num_processes):
    if distributed:
        init_distributed(args.local_rank, torch.device(cfg.MODEL.DEVICE).type, cfg.DIST_TIMEOUT)
    weights = named_weights(args)
    check_weights(weights)

    model = build_detection_model(cfg)
    model.to(cfg.MODEL.DEVICE)
    # A file named on the command line is evaluated as it is. Otherwise what training left in
    # OUTPUT_DIR/last_checkpoint wins over the config file's MODEL.WEIGHT (as in the original:
    # there MODEL.WEIGHT usually names the ImageNet weights that training started from).
    checkpointer = DetectronCheckpointer(cfg, model, save_dir=cfg.OUTPUT_DIR)
    if weights is not None:
        evaluated, source = weights, f"{weights} (named on the command line)"
    elif checkpointer.has_checkpoint():
        evaluated = checkpointer.get_checkpoint_file()
        source = (f"{evaluated} (named by {cfg.OUTPUT_DIR}/last_checkpoint, which wins "
                  "over the config file's MODEL.WEIGHT; pass --ckpt or MODEL.WEIGHT to evaluate another file)")
    else:
        weights = evaluated = cfg.MODEL.WEIGHT
        source = f"{weights} (MODEL.WEIGHT of {args.config_file})"
    # Results and this tool's log.txt go to a folder named after the weights, so evaluating
    # another checkpoint never overwrites the end-of-training evaluation's files.
    folder = results_folder_name(cfg.OUTPUT_DIR, evaluated)
    log_dir = os.path.join(cfg.OUTPUT_DIR, folder) if cfg.OUTPUT_DIR else ""
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)

    logger = setup_logger("atss_core", log_dir, get_rank())
    logger.info("Using %d processes", num_processes)
    logger.info("Loaded configuration file %s", args.config_file)
    logger.info("Running with config:\n%s", cfg)
    if is_main_process():  # only rank 0 prints; the report takes seconds to collect
        logger.info("Collecting env info (might take some time)")
        logger.info("\n%s", collect_env_info())
    log_cpu_memory_setting(logger, cfg.MODEL.DEVICE)
    warn_if_slow_on_cpu(logger, cfg.TEST.DTYPE, cfg.MODEL.DEVICE, "TEST.DTYPE")
    logger.info("Evaluating weights from %s; results go to %s", source,
                os.path.join(cfg.OUTPUT_DIR, folder))
    try:
        checkpointer.load(weights, allow_shape_mismatch=False, use_last_checkpoint=weights is None)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as error:
        sys.exit(f"test_net: {error}")

    try:
        run_test(cfg, model, distributed, folder)
    except DataError as error:
        sys.exit(f"test_net: {one_line_message(error)}")


if __name__ == "__main__":
    main()
