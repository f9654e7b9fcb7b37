"""The whole job: options, both strategies on one clip, many-rank wrapping, ``trace_clip``."""
