"""What every zcfs command shares: the one-line error and its argument parser."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """A mistake on the command line or in the environment; the message says which."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake raises UsageError (one line) instead of printing a usage screen."""

    def error(self, message: str) -> None:
        raise UsageError(message)
