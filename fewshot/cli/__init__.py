"""Command lines: thin argparse layers over the library (`fewshot.training`, `fewshot.evaluation`)."""
