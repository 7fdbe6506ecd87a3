"""What tools/train_net.py and tools/test_net.py share: command-line parsing, config loading
with one-line errors, joining the process group, and the evaluation loop over DATASETS.TEST."""
import contextlib
import datetime
import os
import re

import torch
import torch.distributed as dist

from atss_core.config import merge_config
from atss_core.data import make_data_loader
from atss_core.engine.inference import inference
from atss_core.engine.precision import autocast_dtype
from atss_core.solver import resolve_autocast_dtype
from atss_core.utils.comm import synchronize


def parse_command_line(parser, argv=None):
    """``parser.parse_args`` for a parser whose last argument, ``opts``, collects the KEY VALUE
    pairs (argparse.REMAINDER): flags written after the pairs (``... SOLVER.MAX_ITER 20
    --skip-test``) are parsed as flags too instead of ending up among the pairs."""
    args = parser.parse_args(argv)
    flag_positions = [index for index, token in enumerate(args.opts) if token.startswith("--")]
    if not flag_positions:
        return args
    leading = list(argv)[:len(argv) - len(args.opts)]
    pairs, trailing = args.opts[:flag_positions[0]], args.opts[flag_positions[0]:]
    reparsed = parse_command_line(parser, leading + trailing)
    reparsed.opts = pairs + reparsed.opts
    return reparsed


def load_config(cfg, config_file, opts):
    """``merge_config`` for train_net / test_net, plus the checks that need the merged config
    (MODEL.DEVICE usable here, a known DTYPE and TEST.DTYPE): a user error exits with its
    one-line message."""
    try:
        merge_config(cfg, config_file, opts)
        resolve_autocast_dtype(cfg)
        autocast_dtype(cfg.TEST.DTYPE, "TEST.DTYPE")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    check_device(cfg.MODEL.DEVICE)
    return cfg


def resolve_device(device_name) -> torch.device:
    """The ``torch.device`` that MODEL.DEVICE names. Raises ValueError (one line) when it is no
    device name or names a GPU torch cannot see."""
    try:
        device = torch.device(device_name)
    except RuntimeError:
        raise ValueError(f"MODEL.DEVICE {device_name!r} is not a device name; use cpu or cuda") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE is {device_name!r} but torch sees no GPU on this machine; "
                         "pass MODEL.DEVICE cpu (or check the CUDA driver and CUDA_VISIBLE_DEVICES)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"MODEL.DEVICE is {device_name!r} but torch sees {torch.cuda.device_count()} "
                         "GPU(s); pass MODEL.DEVICE cuda")
    return device


def check_device(device_name):
    """``resolve_device`` for the command-line tools: exit with its one line."""
    try:
        resolve_device(device_name)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def check_batch_divides(images_per_batch, key, num_processes):
    """Exit before the processes meet when ``key`` (a total batch) does not split evenly over
    ``num_processes``; only the first process prints the line, so the job prints it once."""
    if images_per_batch > 0 and images_per_batch % num_processes == 0:
        return
    if int(os.environ.get("RANK", 0)) != 0:
        raise SystemExit(1)
    raise SystemExit(f"error: {key} ({images_per_batch}) must be a positive multiple of the number of "
                     f"processes ({num_processes}); change {key} or the number of processes")


def init_distributed(local_rank, device_type, timeout_s):
    """Join the process group described by the environment (torchrun / torch.distributed.launch):
    NCCL for CUDA models, gloo for CPU ones (MODEL.DEVICE decides, not the hardware). A
    collective that waits more than ``timeout_s`` seconds (DIST_TIMEOUT) for another process
    raises; run the job inside ``stop_on_dist_timeout`` to turn that into one line."""
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout_s))
    synchronize()


@contextlib.contextmanager
def stop_on_dist_timeout(timeout_s, distributed):
    """Turn a collective (or the start-up rendezvous) that timed out after ``timeout_s``
    seconds into a one-line exit of this process, which torchrun then ends the job with."""
    try:
        yield
    except RuntimeError as error:  # gloo, NCCL and the rendezvous store all raise RuntimeErrors
        if not distributed or "timed out" not in str(error).lower():
            raise
        raise SystemExit(f"error: process {os.environ.get('RANK', 0)} waited DIST_TIMEOUT={timeout_s} s for the other "
                         "processes: one of them is stopped, hung or dead (see its log); raise "
                         "DIST_TIMEOUT if a step legitimately takes longer") from None


def inference_output_folder(output_dir, dataset_name, folder="inference"):
    """``OUTPUT_DIR/<folder>/<name>``, with a ``coco:IMG_DIR:ANN_FILE`` name reduced to the
    annotation file's stem and any character unsafe in a folder name replaced by '_'."""
    if dataset_name.startswith("coco:"):
        dataset_name = os.path.splitext(os.path.basename(dataset_name))[0]
    return os.path.join(output_dir, folder, re.sub(r"[^\w.-]", "_", dataset_name))


def results_folder_name(output_dir, weights_file):
    """The folder of OUTPUT_DIR that tools/test_net.py writes to when it evaluates
    ``weights_file``: "inference" for the run's own ``model_final.pth`` (the end-of-training
    evaluation's weights, so its files are rewritten with the same results), else
    "inference_<weights file name without .pth>", which leaves those files alone."""
    final = os.path.join(output_dir, "model_final.pth")
    if weights_file and os.path.isfile(weights_file) and os.path.isfile(final) \
            and os.path.samefile(weights_file, final):
        return "inference"
    stem = os.path.splitext(os.path.basename(weights_file))[0] if weights_file else "untrained"
    return "inference_" + re.sub(r"[^\w.-]", "_", stem)


def evaluate_on_test_sets(cfg, model, data_loaders, folder="inference"):
    """Evaluate ``model`` as it is on each DATASETS.TEST entry (``data_loaders`` in the same
    order); results go to ``OUTPUT_DIR/<folder>/<dataset>``. Returns each dataset's result."""
    results = []
    for dataset_name, data_loader in zip(cfg.DATASETS.TEST, data_loaders):
        output_folder = None
        if cfg.OUTPUT_DIR:
            output_folder = inference_output_folder(cfg.OUTPUT_DIR, dataset_name, folder)
            os.makedirs(output_folder, exist_ok=True)
        results.append(inference(
            model,
            data_loader,
            dataset_name=dataset_name,
            iou_types=("bbox",),
            box_only=False,
            device=cfg.MODEL.DEVICE,
            expected_results=cfg.TEST.EXPECTED_RESULTS,
            expected_results_sigma_tol=cfg.TEST.EXPECTED_RESULTS_SIGMA_TOL,
            output_folder=output_folder,
            bbox_aug_cfg=cfg,
            dtype=cfg.TEST.DTYPE,
        ))
        synchronize()
    return results


def run_test(cfg, model, distributed, folder="inference"):
    """Evaluate ``model`` (unwrapped from DDP) on every DATASETS.TEST entry; results go to
    OUTPUT_DIR/<folder>/<dataset>. Returns the evaluation result of each dataset.

    The model is switched, in place, to its inference fast path (frozen norms folded into the
    convs, channels_last), so it cannot be trained afterwards.
    """
    if distributed and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    model.prepare_for_inference()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    data_loaders = make_data_loader(cfg, is_train=False, is_distributed=distributed)
    return evaluate_on_test_sets(cfg, model, data_loaders, folder)
