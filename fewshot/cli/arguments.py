"""Argument types shared by the command lines: argparse turns their ArgumentTypeError into a usage error that
names the flag."""

from __future__ import annotations

import argparse

#: The largest seed every random generator of a run takes (torch's generators take a signed 64-bit seed).
MAX_SEED = 2**63 - 1


def seed(text: str) -> int:
    """A seed flag's value: a whole number in [0, 2**63 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, 2**63 - 1], got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, 2**63 - 1], got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default once: argparse's "(default: X)" is added only where the help text does not already say
    what the default is, and never for an unset (None) or off (False) default, whose help says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in help_text:
            return help_text
        return super()._get_help_string(action)
