"""`python -m fewshot.zeroshot`: the zero-shot command line (`fewshot.zeroshot.cli`)."""

import sys

from fewshot.zeroshot.cli import main

if __name__ == "__main__":
    sys.exit(main())
