"""Helpers for multi-process (torch.distributed) runs.

Every helper works without an initialised process group, so single-process code
can call them unconditionally.
"""

import inspect

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process():
    return get_rank() == 0


def synchronize():
    """Barrier across all processes; a no-op when running alone."""
    if get_world_size() > 1:
        dist.barrier()


def reduce_sum(tensor):
    """Sum of ``tensor`` over all processes (a copy; the input is left untouched).

    Every rank must call this the same number of times, positives or not, or the
    collectives go out of step and the job hangs.
    """
    if get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(data):
    """Gather any picklable object from every process; returns a list ordered by rank."""
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, data)
    return gathered


def reduce_dict(input_dict, average=True):
    """Reduce a dict of scalar tensors over processes (for logging); rank 0 gets the result."""
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world_size
        return dict(zip(names, values))


def no_buffer_sync_option():
    """The ``DistributedDataParallel`` keyword that turns off the buffer broadcast before every
    forward: ``forward_sync_buffers=False`` where torch has it (torch 2.14 deprecates
    ``broadcast_buffers``), else ``broadcast_buffers=False``. The first also syncs buffers
    once at construction, which changes nothing when every process built the same model."""
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return {name: False}
