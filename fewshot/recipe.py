"""`python -m fewshot.recipe NAME --output DIR`: a multi-stage training recipe as one command (see fewshot.recipes)."""

import sys

from fewshot.cli.recipe import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
