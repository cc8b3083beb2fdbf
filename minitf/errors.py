"""The one exception type that the CLI turns into a single line on stderr (exit 1), and the one way to warn."""
import sys


class MinitfError(Exception):
    """Bad input or data: a message naming the file/argument and the problem, no traceback.

    Raise it with the full one-line message, e.g. ``MinitfError(f"{path}: truncated header")``. A message names
    a parameter by its Python name in backticks, e.g. ``MinitfError(f"`n_prompts` {n}: must be at least 2",
    param="n_prompts")``; ``param`` is the parameter at fault, if one is (a caller can tell which limit was hit),
    and a front end writes each named parameter its own way: the CLI prints ``--n-prompts 1: must be at least 2``.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def warn(message: str) -> None:
    """Tell the user something went differently than asked, and go on: one line ``warning: <message>`` on stderr.

    Every warning minitf gives goes through here — never Python's ``warnings`` module (whose
    ``file:line: UserWarning: …`` format, source line included, is meant for developers) nor ``logging``.
    ``logging`` carries only notes for developers, below WARNING (the LLM client's logprobs fallback, at
    INFO), which show nothing unless the caller configures logging.
    """
    print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
