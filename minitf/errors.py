"""The one exception type that the CLI turns into a single line on stderr (exit 1), and the one way to warn."""
import sys


class MinitfError(Exception):
    """Bad input or data: a message naming the file/argument and the problem, no traceback.

    Raise it with the full one-line message, e.g. ``MinitfError(f"{path}: truncated header")``.
    """


def warn(message: str) -> None:
    """Tell the user something went differently than asked, and go on: one line ``warning: <message>`` on stderr.

    Every warning minitf gives goes through here — never Python's ``warnings`` module (whose
    ``file:line: UserWarning: …`` format, source line included, is meant for developers) nor ``logging``.
    ``logging`` carries only notes for developers, below WARNING (the LLM client's logprobs fallback, at
    INFO), which show nothing unless the caller configures logging.
    """
    print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
