"""The clip as each audio-LM family's model takes it: shared helpers, one builder per family, the registry."""
