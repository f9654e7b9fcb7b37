"""The clip as the model received it, and what it cost in frames and tokens."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ClipRecord:
    """The clip as the model received it: the file and what was done to it (audio.ClipInfo), and its cost
    in frames and tokens (the JSON "clip" object)."""
    info: object  # audio.ClipInfo
    mel_frames: int
    mel_frames_padded: int
    encoder_frames: int | None
    audio_tokens: int | None
    padded_fraction: float
    length_function: str
    template: str
    prompt_tokens: int | None
    target_tokens: int | None
    audio_in_lm: bool = True  # False: an encoder-decoder's decoder cross-attends the audio

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("info", "audio_in_lm")}
        return {**self.info.to_dict(), **d}
