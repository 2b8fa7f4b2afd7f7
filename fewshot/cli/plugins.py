"""`--import MODULE`, the plug-in flag of every command line: a user's module that registers learners, distances,
backbones, datasets (any registry, docs/extending.md) is imported before the names on the command line are
checked and before a checkpoint is loaded, so that a run, its evaluation and its search all find the components
it names.

MODULE is a module name importable from the working directory (`my_losses`, `lab.plugins`) or a path to a `.py`
file (`./my_losses.py`). Repeatable; each module is imported once per process.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

#: The flag, and where the parsed namespace keeps its values.
FLAG = "--import"
DEST = "plugins"

#: What the help of `--import` says.
HELP = ("a module that registers plug-in components (learners, distances, backbones, datasets, ...; "
        "docs/extending.md): a module name importable from the working directory or a path to a .py file; "
        "imported before the names given are checked and checkpoints are loaded; repeatable")


class PluginImportError(ValueError):
    """A `--import` module that could not be found or failed while being imported."""


def add_import_flag(parser: argparse.ArgumentParser) -> None:
    """Give `parser` the `--import MODULE` flag (repeatable; left out of the namespace when not given if the parser
    suppresses its defaults)."""
    default = argparse.SUPPRESS if parser.argument_default == argparse.SUPPRESS else []
    parser.add_argument(FLAG, dest=DEST, action="append", default=default, metavar="MODULE", help=HELP)


def import_plugin(spec: str) -> object:
    """Import one plug-in module, named (`pkg.mod`, found from the working directory too) or given as a `.py` path;
    a PluginImportError names it when it cannot be found or its import fails."""
    path = Path(spec).expanduser()
    try:
        if spec.endswith(".py") or os.sep in spec or (os.altsep and os.altsep in spec):
            return _import_file(spec, path)
        if "" not in sys.path and os.getcwd() not in sys.path:  # console scripts do not put the working dir first
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(spec)
    except PluginImportError:
        raise
    except ModuleNotFoundError as error:
        if error.name is not None and spec.split(".")[0] == error.name.split(".")[0] and spec.startswith(error.name):
            raise PluginImportError(f"{FLAG} {spec}: no module named {error.name!r} (expected a module importable "
                                    "from the working directory or a path to a .py file)") from error
        raise PluginImportError(f"{FLAG} {spec}: importing it failed: {type(error).__name__}: {error}") from error
    except Exception as error:  # the user's module raised while being imported: name it and what it raised
        raise PluginImportError(f"{FLAG} {spec}: importing it failed: {type(error).__name__}: {error}") from error


def _import_file(spec: str, path: Path) -> object:
    if path.suffix != ".py":
        raise PluginImportError(f"{FLAG} {spec}: a path must name a .py file")
    if not path.is_file():
        raise PluginImportError(f"{FLAG} {spec}: no such file")
    path = path.resolve()
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
        return loaded  # imported already (by an earlier --import or by name): its registrations stand
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise PluginImportError(f"{FLAG} {spec}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # registered before it runs: dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugins(specs: Sequence[str]) -> None:
    """Import every `--import` module, in order."""
    for spec in specs:
        import_plugin(spec)


def parse_with_plugins(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv` with `parser`, the `--import` modules imported first (they may register the names the other
    flags give); a module that cannot be imported is a usage error naming it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_import_flag(early)
    try:
        import_plugins(getattr(early.parse_known_args(argv)[0], DEST))
    except PluginImportError as error:
        parser.error(str(error))
    return parser.parse_args(argv)


def run_command(command: str, args: argparse.Namespace, *extra: object) -> int:
    """Run `command` on its parsed `args`: its runner, `fewshot.cli.runners.<command>.run`, is imported only now.

    This is the one place a command line imports its work: the runners import torch and the library, so a command's
    module (its parser) stays light and `--help` or a bad flag answers without them."""
    return importlib.import_module(f"fewshot.cli.runners.{command}").run(args, *extra)
