"""`python -m fewshot.search`: the same as `python -m fewshot search` (`fewshot.cli.search`). Nothing is importable from here."""

if __name__ == "__main__":
    import sys

    from fewshot.cli.search import main

    sys.exit(main())
