"""``python -m minitf …``: the same command line as ``python cli.py …`` and the ``minitf`` console script."""
from minitf.cli import main

main(prog_name="minitf")
