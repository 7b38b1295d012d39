"""The training package's own failures, importable without torch so that the CLI can map them to exit codes.

Bad user input (options, data, paths) raises ValueError, FileNotFoundError or `training.data.DataError`.
"""


class TrainingDiverged(RuntimeError):
    """The loss, gradients or weights became non-finite; nothing from the diverged steps was saved."""


class ExportError(Exception):
    """The export could not be produced or did not verify; nothing was published."""
