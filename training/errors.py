"""The training package's own failures, importable without torch so that the CLI can map them to exit codes.

Bad user input (options, data, paths) raises ValueError, FileNotFoundError or `DataError`.
"""


class TrainingDiverged(RuntimeError):
    """The loss, gradients or weights became non-finite; nothing from the diverged steps was saved."""


class ExportError(Exception):
    """The export could not be produced or did not verify; nothing was published."""


class DataError(Exception):
    """Missing or unusable training data; the message says what is wrong and how to get good data."""
