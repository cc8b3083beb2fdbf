"""The one exception type that the CLI turns into a single line on stderr (exit 1)."""


class MinitfError(Exception):
    """Bad input or data: a message naming the file/argument and the problem, no traceback.

    Raise it with the full one-line message, e.g. ``MinitfError(f"{path}: truncated header")``.
    """
