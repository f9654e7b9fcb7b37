"""What ``trace_clip`` tells as the report is made: an ``Observer`` with one method per event, so a listener
overrides the ones it needs and a misspelt event cannot pass silently. A plain ``fn(event, report, detail)``
(the first form of the API) is still taken, through ``as_observer``."""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable


@runtime_checkable
class Observing(Protocol):
    """Anything with the seven methods is an observer (no need to subclass ``Observer``)."""

    def on_progress(self, text: str) -> None: ...
    def on_note(self, report: Any, text: str) -> None: ...
    def on_static(self, report: Any) -> None: ...
    def on_clip(self, report: Any) -> None: ...
    def on_lora(self, report: Any) -> None: ...
    def on_run(self, report: Any, strategy: str) -> None: ...
    def on_done(self, report: Any) -> None: ...


class Observer:
    """Each event does nothing here; subclass and override. ``report`` is a ``TraceReport`` as it stands at
    that moment. Order: ``on_progress`` while a model is first built (before any report), ``on_note`` whenever
    the tool decides something for the user, then ``on_static``, ``on_clip`` (when a clip is read),
    ``on_lora`` (when LoRA is attached), ``on_run`` once per strategy, ``on_done`` last."""

    def on_progress(self, text: str) -> None:
        """Long work before the report starts (a named model's first build)."""

    def on_note(self, report: Any, text: str) -> None:
        """A note, also kept in ``report.notes``."""

    def on_static(self, report: Any) -> None:
        """``report.static`` is ready."""

    def on_clip(self, report: Any) -> None:
        """``report.clip`` and ``report.inputs`` are ready, or ``report.clip_error`` says why not."""

    def on_lora(self, report: Any) -> None:
        """``report.lora_setup`` is ready."""

    def on_run(self, report: Any, strategy: str) -> None:
        """``report.runs[strategy]`` is ready."""

    def on_done(self, report: Any) -> None:
        """The whole report, as ``trace_clip`` returns it."""


class _Calls(Observer):
    """A callable ``fn(event, report, detail)`` heard as an Observer, with the events' old names."""

    def __init__(self, fn: Callable[[str, Any, Any], None]):
        self.fn = fn

    def on_progress(self, text):
        self.fn("progress", None, text)

    def on_note(self, report, text):
        self.fn("note", report, text)

    def on_static(self, report):
        self.fn("static", report, None)

    def on_clip(self, report):
        self.fn("clip", report, None)

    def on_lora(self, report):
        self.fn("lora", report, None)

    def on_run(self, report, strategy):
        self.fn("run", report, strategy)

    def on_done(self, report):
        self.fn("done", report, None)


def as_observer(observer) -> Observing:
    """None (nobody listens), an observer, or a callable ``fn(event, report, detail)``."""
    if observer is None:
        return Observer()
    if isinstance(observer, Observing):
        return observer
    if callable(observer):
        return _Calls(observer)
    raise TypeError(f"observer: an Observer or a callable fn(event, report, detail), not {type(observer).__name__}")
