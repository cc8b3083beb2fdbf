"""``python cli.py …``: the command line lives in ``minitf/cli/`` (also ``python -m minitf`` and ``minitf``)."""
from minitf.cli import main

if __name__ == "__main__":
    main()
