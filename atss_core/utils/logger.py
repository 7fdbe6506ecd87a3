"""Console and ``log.txt`` logging for the main process."""
import logging
import os
import sys

_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logger(name, save_dir, distributed_rank, filename="log.txt"):
    """Configure logger ``name`` to print to stdout and append to ``save_dir/filename``.

    Processes other than rank 0 get the logger without handlers, so only the main
    process prints. Calling this twice for the same logger does not duplicate lines.

    The logger passes INFO and up; the handlers print whatever reaches them, so one module's
    DEBUG lines can be switched on alone, e.g. the ATSS assigner's count of boxes without a
    positive: ``logging.getLogger("atss_core.modeling.rpn.atss.assigners").setLevel("DEBUG")``.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    if distributed_rank > 0:
        return logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT)
    console = logging.StreamHandler(stream=sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if save_dir:
        log_file = logging.FileHandler(os.path.join(save_dir, filename))
        log_file.setFormatter(formatter)
        logger.addHandler(log_file)
    return logger
