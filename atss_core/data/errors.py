"""The error the data pipeline raises for a mistake in the user's data."""

__all__ = ["DataError", "one_line_message"]


class DataError(ValueError):
    """A missing, unreadable or inconsistent data file or entry (annotation json, image, data set name).

    The message is one line that names the file or entry and says how to fix it; the command-line
    tools print it and exit with status 1 instead of showing a traceback.
    """


def one_line_message(error):
    """The message of ``error`` on one line.

    A DataLoader worker re-raises an error in the main process with the worker's traceback put in
    front of the message; its last line is the original ``module.Class: message`` line.
    """
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return lines[-1].removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")
