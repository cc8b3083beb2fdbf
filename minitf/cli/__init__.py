"""minitf's command line: it only parses and prints; the work is in the ``minitf`` package.

``options`` builds the group and each shared option once; the commands register on it from ``commands`` (the
model's: info, run, download, trace, report, neurons, index), ``llm_commands`` (explain, score) and
``study_command`` (study). ``python cli.py``, ``python -m minitf`` and the ``minitf`` script all run ``main``.
"""
from minitf.cli.options import flag_of, main
from minitf.cli import commands, llm_commands, study_command  # noqa: F401 (each registers its commands on main)

__all__ = ["main", "flag_of"]
