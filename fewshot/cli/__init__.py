"""Command lines: thin argparse layers over the library, one module per command, and `main`, the
dispatcher behind `python -m fewshot COMMAND` and the `fewshot` console script.

Each command's module is imported only when that command runs, and imports nothing heavy itself: its parser is
built from `fewshot.cli.catalogue` (the registries' built-in names and the configs' defaults), so `--help` never
imports torch. Once the flags parse, `main` imports the command's runner (`fewshot.cli.runners.<command>.run`), which
does the work. `--import MODULE` (`fewshot.cli.plugins`) brings a user's plug-in components to every command.
"""

from __future__ import annotations

import importlib
import sys

#: Command name -> (module under fewshot.cli, one line of help).
COMMANDS = {
    "train": ("train", "train a metric learner on base classes"),
    "evaluate": ("evaluate", "evaluate a checkpoint on novel classes with 95% intervals"),
    "search": ("search", "build and query a search index; verify and calibrate"),
    "zeroshot": ("zeroshot", "zero-shot learning from class attributes (GBU protocol)"),
    "recipe": ("recipe", "run a multi-stage training recipe"),
    "embed": ("embed", "embed a folder of images with a checkpoint (.npy and a file list)"),
    "predict": ("predict", "classify a query folder against a support folder (a CSV)"),
}


def usage() -> str:
    lines = ["usage: python -m fewshot COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`python -m fewshot COMMAND --help` lists a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run `fewshot COMMAND ARGS`: the command's own `main(ARGS)`; its exit code is returned."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"fewshot.cli.{COMMANDS[command][0]}")
    return module.main(rest)
