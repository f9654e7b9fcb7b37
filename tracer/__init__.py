"""tracer: a runtime tracer for audio-language models (Qwen2-Audio first).

Heavy imports (torch, transformers, peft) are deferred so ``bin/trace --help`` stays fast.
"""
__version__ = "0.1.0"
__all__ = ["Tracer", "TracerCallback", "static_report", "trace_clip", "TraceOptions", "TraceReport", "TracerError",
           "Observer"]


def __getattr__(name):
    if name == "Tracer":
        from .api.tracer import Tracer
        return Tracer
    if name == "static_report":
        from .static.discovery import static_report
        return static_report
    if name in ("trace_clip", "TraceReport"):
        from .run import pipeline
        return getattr(pipeline, name)
    if name == "TraceOptions":
        from .run.options import TraceOptions
        return TraceOptions
    if name == "Observer":
        from .run.observer import Observer
        return Observer
    if name == "TracerCallback":
        from .api.callback import TracerCallback
        return TracerCallback
    if name == "TracerError":
        from .errors import TracerError
        return TracerError
    raise AttributeError(f"module 'tracer' has no attribute {name!r}")
