"""`python -m fewshot.evaluate`: the same as `python -m fewshot evaluate` (`fewshot.cli.evaluate`). Nothing is importable from here."""

if __name__ == "__main__":
    import sys

    from fewshot.cli.evaluate import main

    sys.exit(main())
