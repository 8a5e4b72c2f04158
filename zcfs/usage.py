"""What every zcfs command shares: the one-line error, its argument parser, optional packages."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType


class UsageError(Exception):
    """A mistake on the command line or in the environment; the message says which."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake raises UsageError (one line) instead of printing a usage screen."""

    def error(self, message: str) -> None:
        raise UsageError(message)


def import_optional(module: str, needed_for: str, extra: str, otherwise: str = "") -> ModuleType:
    """Import a package that only one feature needs (an extra, `zcfs[EXTRA]`); UsageError if it is missing.

    Only the package's own absence is turned into the one line: an
    ImportError from inside it (a broken install) keeps its traceback.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != module:
            raise
        raise UsageError(f"{needed_for} needs {module}: pip install 'zcfs[{extra}]'"
                         + (f" (or {otherwise})" if otherwise else "")) from None
