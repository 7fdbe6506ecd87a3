"""Training metrics for later inspection: ``metrics.json`` (JSON lines) and TensorBoard events.

Each row of ``OUTPUT_DIR/metrics.json`` is one JSON object with an ``iteration`` and scalars,
detectron2's convention: one row per logged training iteration (losses, lr, timings) and one
per evaluation (``bbox/AP`` ...). TensorBoard gets the same scalars, one tag per key.

A resumed run restarts at its checkpoint's iteration, and the killed run may have written rows
past it. Those rows are dropped when the writer opens (and TensorBoard is told to hide its
events from there on, ``purge_step``), so that every iteration appears once, with the values of
the run that produced the final weights.
"""
import json
import os

METRICS_FILE = "metrics.json"


def read_metrics(path):
    """The rows of a ``metrics.json`` file, as a list of dicts (a torn last line is ignored)."""
    rows = []
    with open(path) as stream:
        for line in stream:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed while writing its last line
                continue
    return rows


def _row_kind(row):
    return row.get("iteration", 0), frozenset(row)


class MetricsWriter:
    """Writes scalars to ``output_dir/metrics.json`` and to TensorBoard event files in ``output_dir``.

    Only the main process should make one (the trainer passes None elsewhere), so writing adds no
    synchronisation between processes.

    Args:
        output_dir (str): OUTPUT_DIR.
        start_iter (int): the iteration training starts from; rows after it are removed.
        tensorboard (bool): also write TensorBoard events.
    """

    def __init__(self, output_dir, start_iter=0, tensorboard=True):
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, METRICS_FILE)
        self._logged = set()  # (iteration, names) of the rows in the file
        self._drop_rows_after(start_iter)
        self._stream = open(self.path, "a")
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tensorboard = SummaryWriter(output_dir, purge_step=start_iter + 1)

    def _drop_rows_after(self, start_iter):
        if not os.path.exists(self.path):
            return
        kept = [row for row in read_metrics(self.path) if row.get("iteration", 0) <= start_iter]
        self._logged = {_row_kind(row) for row in kept}
        tmp_path = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp_path, "w") as stream:
            stream.writelines(json.dumps(row) + "\n" for row in kept)
        os.replace(tmp_path, self.path)

    def write(self, iteration, scalars):
        """Append one row ``{"iteration": iteration, **scalars}`` (scalars: dict of name -> number).

        A row with the same iteration and names as one already in the file (the final
        evaluation of a finished run started again) is not written a second time."""
        row = {"iteration": iteration}
        row.update((name, float(value)) for name, value in scalars.items())
        if _row_kind(row) in self._logged:
            return
        self._logged.add(_row_kind(row))
        self._stream.write(json.dumps(row) + "\n")
        self._stream.flush()
        if self._tensorboard is not None:
            for name, value in scalars.items():
                self._tensorboard.add_scalar(name, value, iteration)
            self._tensorboard.flush()

    def close(self):
        self._stream.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
