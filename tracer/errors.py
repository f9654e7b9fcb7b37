"""Exceptions the CLI turns into exit codes (documented in the README)."""

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_STRATEGY_FAILED = 3
EXIT_FAULTS = 1  # bin/trace audit: the adapter has a fault (the same code as unexpected errors)


class TracerError(Exception):
    """Bad input or usage: printed as one line ``error: …`` and exit code 2."""


class StrategyFailed(Exception):
    """A strategy's pass raised ``error`` (also its ``__cause__``); ``failed_in`` names the innermost module
    it passed through, when a traced rerun could tell. The user's exception object is left untouched."""

    def __init__(self, error: BaseException, failed_in: str | None):
        super().__init__(f"{type(error).__name__}: {first_line(error)}")
        self.error = error
        self.failed_in = failed_in


def first_line(error: BaseException) -> str:
    """An exception as one short line for ``error: …`` messages."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def read_json_object(path: str, label: str) -> dict:
    """A JSON object from a file, or TracerError: ``{label} {path}: no such file / not valid JSON / …``."""
    import json
    from pathlib import Path
    file = Path(path)
    if not file.is_file():
        raise TracerError(f"{label} {path}: no such file")
    try:
        values = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TracerError(f"{label} {path}: not valid JSON ({first_line(e)})") from None
    if not isinstance(values, dict):
        raise TracerError(f"{label} {path}: expected a JSON object")
    return values
