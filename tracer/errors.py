"""Exceptions the CLI turns into exit codes (documented in the README)."""

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_STRATEGY_FAILED = 3


class TracerError(Exception):
    """Bad input or usage: printed as one line ``error: …`` and exit code 2."""


def first_line(error: BaseException) -> str:
    """An exception as one short line for ``error: …`` messages."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
