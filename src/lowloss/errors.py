"""The one exception type for bad input (kept import-free so the command line starts fast)."""


class LowlossError(Exception):
    """An error caused by the user's input; the CLI prints its message without a traceback."""
