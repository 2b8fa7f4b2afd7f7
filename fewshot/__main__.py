"""`python -m fewshot COMMAND ...`: one entry point for every command line (`fewshot.cli`)."""

import sys

from fewshot.cli import main

if __name__ == "__main__":
    sys.exit(main())
