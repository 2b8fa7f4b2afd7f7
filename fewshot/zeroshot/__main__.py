"""`python -m fewshot.zeroshot`: the same as `python -m fewshot zeroshot` (`fewshot.cli.zeroshot`)."""

if __name__ == "__main__":
    import sys

    from fewshot.cli.zeroshot import main

    sys.exit(main())
