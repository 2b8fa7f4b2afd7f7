"""`python -m fewshot.train`: the same as `python -m fewshot train` (`fewshot.cli.train`). Nothing is importable from here."""

if __name__ == "__main__":
    import sys

    from fewshot.cli.train import main

    sys.exit(main())
