"""The command-line entry points: `python -m fewshot COMMAND`, the `python -m fewshot.<command>` shims (which
re-export nothing), the console scripts of pyproject.toml, and the one error-to-exit-code table."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fewshot.cli import COMMANDS
from fewshot.cli import main as fewshot_main
from fewshot.cli.errors import COMMAND_ERRORS, exit_code_for, report_error, report_interrupt
from fewshot.runtime import RankFailure
from fewshot.training import NonFiniteLoss, OutputError, RunInUse, TrainingInterrupted

ROOT = Path(__file__).resolve().parents[2]
COMMAND_NAMES = ("train", "evaluate", "search", "zeroshot", "recipe", "embed", "predict")  # every command, in the listed order
SHIMS = ("fewshot.train", "fewshot.evaluate", "fewshot.recipe", "fewshot.search", "fewshot.zeroshot.__main__")


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_python_m_fewshot_lists_every_command():
    result = run_python("-m", "fewshot", "--help")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert tuple(listed[:len(COMMAND_NAMES)]) == COMMAND_NAMES and set(COMMANDS) == set(COMMAND_NAMES)


@pytest.mark.parametrize("argv", [("-m", "fewshot", "train", "--help"), ("-m", "fewshot.train", "--help")])
def test_train_help_through_the_dispatcher_and_the_shim(argv):
    result = run_python(*argv)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m fewshot.train" in result.stdout and "--ways" in result.stdout


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_every_command_answers_help_through_the_dispatcher(command: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fewshot_main([command, "--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_dispatcher_rejects_an_unknown_command(capsys):
    assert fewshot_main(["trian"]) == 2
    assert "unknown command 'trian'; expected one of train, evaluate" in capsys.readouterr().err
    assert fewshot_main([]) == 2


@pytest.mark.parametrize("name", SHIMS)
def test_shims_define_no_importable_names(name: str):
    module = importlib.import_module(name)
    assert [key for key in vars(module) if not (key.startswith("__") and key.endswith("__"))] == []


def test_console_scripts_point_at_each_commands_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {"fewshot": "fewshot.cli:main", **{f"fewshot-{name}": f"fewshot.cli.{name}:main" for name in COMMAND_NAMES}}
    assert scripts == expected
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))


# ----------------------------------------------------------------------------------------------
# The error-to-exit-code table
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error, code", [
    (ValueError("--ways 0"), 2),
    (TypeError("pass a folder"), 2),
    (FileNotFoundError("checkpoint x does not exist"), 2),
    (FileExistsError("x exists"), 2),
    (NonFiniteLoss("loss is NaN"), 2),
    (OutputError("cannot write x"), 2),
    (RunInUse("x is in use"), 2),
    (ImportError("approximate search needs faiss"), 2),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/ro/index.pt"), 2),
    (RankFailure("rank 1 stopped"), 1),
])
def test_exit_codes(error: BaseException, code: int, capsys):
    assert isinstance(error, COMMAND_ERRORS) and exit_code_for(error) == code
    assert report_error(error) == code
    assert capsys.readouterr().err.startswith("error: ")


def test_messages_of_library_and_operating_system_errors(capsys):
    report_error(FileNotFoundError("checkpoint x.pt does not exist"))
    assert capsys.readouterr().err == "error: checkpoint x.pt does not exist\n"
    report_error(PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/ro/index.pt"))
    assert capsys.readouterr().err == f"error: {os.strerror(errno.EACCES)}: /ro/index.pt\n"
    report_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert capsys.readouterr().err == f"error: {os.strerror(errno.ENOSPC)}\n"


def test_a_bug_has_no_exit_code():
    assert not isinstance(KeyError("x"), COMMAND_ERRORS)
    with pytest.raises(ValueError, match="KeyError has no exit code"):
        exit_code_for(KeyError("x"))


def test_interrupts(capsys):
    assert report_interrupt(TrainingInterrupted("SIGTERM received: interrupted before episode 3", 15), "resume") == 143
    assert capsys.readouterr().err == "\nSIGTERM received: interrupted before episode 3\nresume\n"
    assert report_interrupt(KeyboardInterrupt()) == 130
    assert "nothing was saved" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate", "search", "zeroshot", "recipe", "embed", "predict"])
def test_every_flag_has_help_text_and_shows_its_default_once(command: str) -> None:
    parser = importlib.import_module(f"fewshot.cli.{command}").build_parser()
    parsers = [(command, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += [(f"{command} {name}", sub) for name, sub in action.choices.items()]
    missing = [f"{where} {action.option_strings or action.dest}" for where, sub in parsers for action in sub._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert not missing, missing
    for where, sub in parsers:
        text = sub.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, where
