"""The training loop."""
import datetime
import logging
import time

import torch
import torch.distributed as dist

from atss_core.utils.checkpoint_retention import remove_old_periodic_checkpoints
from atss_core.utils.comm import get_rank, get_world_size, reduce_dict
from atss_core.utils.metric_logger import MetricLogger

LOG_PERIOD = 20  # SOLVER.LOG_PERIOD's default
BEST_METRIC = "bbox/AP"  # model_best.pth keeps the weights with the highest value of this metric


def _all_processes_finite(loss):
    """Whether ``loss`` is finite on every process (so that all of them stop together)."""
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if get_world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _describe_batch(data_loader, image_indices):
    """The batch's dataset indices, with file names when the dataset can tell them."""
    description = f"dataset indices {list(image_indices)}"
    dataset = getattr(data_loader, "dataset", None)
    if hasattr(dataset, "get_img_info"):
        names = [dataset.get_img_info(index).get("file_name", "?") for index in image_indices]
        description += f" (files {names})"
    return description


def _training_scalars(meters, optimizer, device):
    """One metrics.json row of a logged iteration: losses, time and data_time as their window
    medians (the log line's first numbers), the current lr and, on CUDA, the peak memory (MB)."""
    scalars = {name: meter.median for name, meter in meters.meters.items()
               if name not in ("time", "data")}
    scalars.update(lr=optimizer.param_groups[0]["lr"], time=meters.time.median,
                   data_time=meters.data.median)
    if device.type == "cuda":
        scalars["max_mem"] = torch.cuda.max_memory_allocated() / 1024 ** 2
    return scalars


def _evaluate_and_keep_best(evaluator, model, iteration, arguments, checkpointer, metrics_writer,
                            logger):
    """Run ``evaluator`` (on every process), put the model back in train mode, record the
    metrics and save ``model_best`` when BEST_METRIC improved. The best value and its iteration
    are kept in ``arguments``, so every later checkpoint (and a resumed run) knows them."""
    metrics = evaluator(model)
    model.train()
    if not metrics:  # processes other than the main one get no results
        return
    if metrics_writer is not None:
        metrics_writer.write(iteration, metrics)
    if BEST_METRIC not in metrics:
        return
    value = metrics[BEST_METRIC]
    best = arguments.get("best_bbox_AP")
    if best is None or value > best:
        arguments.update(best_bbox_AP=value, best_iteration=iteration)
        logger.info("New best %s %.4f at iteration %d (previous best: %s); saving model_best",
                    BEST_METRIC, value, iteration, "none" if best is None else f"{best:.4f}")
        checkpointer.save("model_best", **arguments)
    else:
        logger.info("%s %.4f at iteration %d; best so far %.4f at iteration %d", BEST_METRIC,
                    value, iteration, best, arguments["best_iteration"])


def do_train(model, data_loader, optimizer, scheduler, checkpointer, device, checkpoint_period,
             arguments, scaler=None, autocast_dtype=None, log_period=LOG_PERIOD,
             metrics_writer=None, evaluator=None, eval_period=0, checkpoint_keep=0):
    """Run the iterations from ``arguments["iteration"]`` up to ``len(data_loader)``.

    Each iteration: forward in ``model.train()`` mode, sum the loss dict, backward,
    ``optimizer.step()`` then ``scheduler.step()`` (so the schedule's entry k is the lr of
    iteration k + 1). Every ``log_period`` iterations a line with the ETA, the iteration,
    each loss's window median and global average, timings, lr and (on CUDA) the peak
    GPU memory is logged, and written to ``metrics_writer``. Every ``eval_period``
    iterations and at the end, ``evaluator`` runs and the best weights so far go to
    ``model_best``. A checkpoint is saved every ``checkpoint_period`` iterations
    (only the newest ``checkpoint_keep`` of them are kept) and as ``model_final`` at the end.

    Args:
        model (nn.Module): returns a dict of 0-d losses from ``model(images, targets)``.
        data_loader: yields ``(images, targets, image_indices)``; its length is the total
            number of iterations (MAX_ITER), including those done before a resume.
        optimizer, scheduler: see ``atss_core.solver``.
        checkpointer (Checkpointer): saves the state; ``arguments`` go into every file.
        device (torch.device): where images and targets are moved.
        checkpoint_period (int): SOLVER.CHECKPOINT_PERIOD.
        arguments (dict): training state saved with checkpoints; ``"iteration"`` (the
            number of completed iterations) is updated in place.
        scaler (torch.amp.GradScaler, optional): loss scaler for float16 training.
        autocast_dtype (torch.dtype, optional): run the forward under ``torch.autocast``
            with this dtype; the losses are summed and reported in float32.
        log_period (int): SOLVER.LOG_PERIOD.
        metrics_writer (MetricsWriter, optional): gets the logged scalars; main process only.
        evaluator (callable, optional): ``evaluator(model)`` is called on every process and
            returns ``{"bbox/AP": value, ...}`` on the main process, an empty dict elsewhere.
        eval_period (int): TEST.EVAL_PERIOD; 0 never calls ``evaluator``.
        checkpoint_keep (int): SOLVER.CHECKPOINT_KEEP; 0 keeps every periodic checkpoint.

    Raises:
        FloatingPointError: a loss is NaN or infinite; the message names the iteration
            and the images of the batch. The weights are left as they were before it.
    """
    logger = logging.getLogger("atss_core.trainer")
    logger.info("Start training")
    meters = MetricLogger(delimiter="  ")
    max_iter = len(data_loader)
    start_iter = arguments["iteration"]
    device = torch.device(device)
    if scaler is None:
        scaler = torch.amp.GradScaler(device.type, enabled=False)
    model.train()
    start_training_time = time.time()
    end = time.time()
    for iteration, (images, targets, image_indices) in enumerate(data_loader, start_iter):
        data_time = time.time() - end
        iteration = iteration + 1
        arguments["iteration"] = iteration

        images = images.to(device)
        targets = [target.to(device) for target in targets]

        with torch.autocast(device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            loss_dict = model(images, targets)
        loss_dict = {name: loss.float() for name, loss in loss_dict.items()}
        losses = sum(loss_dict.values())

        if not _all_processes_finite(losses):
            values = ", ".join(f"{name}={loss.item():.4g}" for name, loss in loss_dict.items())
            raise FloatingPointError(
                f"non-finite loss at iteration {iteration} (rank {get_rank()}: {values}); "
                f"batch: {_describe_batch(data_loader, image_indices)}. Training stopped; check "
                "these images' annotations or rerun with a lower SOLVER.BASE_LR (the rerun resumes "
                "from the last checkpoint with the config's lr schedule)")

        # Averaged over processes for logging only; the backward uses the local losses.
        loss_dict_reduced = reduce_dict(loss_dict, average=True)  # the average, on rank 0 only
        losses_reduced = sum(loss_dict_reduced.values())
        meters.update(loss=losses_reduced, **loss_dict_reduced)

        optimizer.zero_grad()
        scaler.scale(losses).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        batch_time = time.time() - end
        end = time.time()
        meters.update(time=batch_time, data=data_time)

        if iteration % log_period == 0 or iteration == max_iter:
            eta_seconds = meters.time.global_avg * (max_iter - iteration)
            fields = [
                f"eta: {datetime.timedelta(seconds=int(eta_seconds))}",
                f"iter: {iteration}",
                str(meters),
                f"lr: {optimizer.param_groups[0]['lr']:.6f}",
            ]
            if device.type == "cuda":
                fields.append(f"max mem: {torch.cuda.max_memory_allocated() / 1024 ** 2:.0f}")
            logger.info(meters.delimiter.join(fields))
            if metrics_writer is not None:
                metrics_writer.write(iteration, _training_scalars(meters, optimizer, device))
        if eval_period > 0 and (iteration % eval_period == 0 or iteration == max_iter):
            _evaluate_and_keep_best(evaluator, model, iteration, arguments, checkpointer,
                                    metrics_writer, logger)
            end = time.time()  # the evaluation is not the next iteration's data loading time
        if iteration % checkpoint_period == 0:
            checkpointer.save(f"model_{iteration:07d}", **arguments)
            if checkpointer.save_to_disk:
                remove_old_periodic_checkpoints(checkpointer.save_dir, checkpoint_keep,
                                                checkpointer.get_checkpoint_file())
        if iteration == max_iter:
            checkpointer.save("model_final", **arguments)

    total_training_time = time.time() - start_training_time
    iterations_run = max(arguments["iteration"] - start_iter, 1)
    logger.info("Total training time: %s (%.4f s / it)",
                datetime.timedelta(seconds=total_training_time),
                total_training_time / iterations_run)
