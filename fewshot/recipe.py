"""`python -m fewshot.recipe`: the same as `python -m fewshot recipe` (`fewshot.cli.recipe`). Nothing is importable from here."""

if __name__ == "__main__":
    import sys

    from fewshot.cli.recipe import main

    sys.exit(main())
