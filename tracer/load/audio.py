"""Audio in: read a window of a real file, validate it, mix down, resample, and record what was done."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TracerError

CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
CLIPPED_WARN_FRACTION = 0.001
SILENCE_RMS = 1e-4


@dataclass(frozen=True)
class ClipInfo:
    """What the clip was and what happened to it on the way to the model (the JSON "clip" object)."""
    path: str
    format: str
    subtype: str
    source_sample_rate: int
    source_channels: int
    sample_rate: int
    duration_s: float
    offset_s: float
    used_duration_s: float
    dropped_s: float
    samples: int
    peak: float
    rms: float
    clipped_fraction: float
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Clip:
    info: ClipInfo
    waveform: np.ndarray  # float32, mono, at info.sample_rate


def load_clip(path: str, sample_rate: int, max_seconds: float = 30.0, offset: float = 0.0,
              duration: float | None = None) -> Clip:
    """Read ``[offset, offset + min(duration, max_seconds))`` of ``path`` as mono float32 at ``sample_rate``.

    Only that window is decoded, so a long file costs no more than the part the model can see.
    Raises TracerError (one line) for anything the model could not be given.
    """
    check_clip_args(path, offset, duration)
    file = Path(path)
    try:
        data, meta = _read_soundfile(file, offset, duration, max_seconds)
    except _NotSoundfile as e:
        data, meta = _read_librosa(file, offset, duration, max_seconds, reason=str(e))
    warnings = list(meta.pop("warnings"))
    if data.size == 0:
        raise TracerError(f"{path}: no samples in the window read")
    if not np.isfinite(data).all():
        raise TracerError(f"{path}: contains NaN or Inf samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if data.shape[1] > 1:
        warnings.append(f"mixed {data.shape[1]} channels down to mono")
    source_rate = meta["source_sample_rate"]
    if source_rate != sample_rate:
        import librosa
        mono = librosa.resample(mono, orig_sr=source_rate, target_sr=sample_rate)
        warnings.append(f"resampled {source_rate} Hz -> {sample_rate} Hz")
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    # NB: no full-size float64 or abs() temporaries: a 30 s window stays the largest allocation.
    peak = float(max(data.max(), -data.min()))
    rms = float(np.linalg.norm(mono) / np.sqrt(len(mono)))
    clipped = float(np.count_nonzero((data >= CLIP_LEVEL) | (data <= -CLIP_LEVEL)) / data.size)
    if rms < SILENCE_RMS:
        warnings.append(f"clip is silent (RMS {rms:.2g}): costs are real, but the model hears nothing")
    if clipped > CLIPPED_WARN_FRACTION:
        warnings.append(f"clipping: {clipped:.1%} of samples at full scale")
    used = len(mono) / sample_rate
    total = meta["duration_s"]
    dropped = max(0.0, total - used)
    if dropped > 0.0005:
        warnings.insert(0, f"the model sees at most {max_seconds:g} s per clip: used {offset:g}-{offset + used:.2f} s "
                           f"of {total:.2f} s, {dropped:.2f} s dropped (pick another window with --offset/--duration)")
    info = ClipInfo(path=str(path), sample_rate=sample_rate, offset_s=offset, used_duration_s=round(used, 6),
                    dropped_s=round(dropped, 6), samples=len(mono), peak=peak, rms=rms, clipped_fraction=clipped,
                    warnings=warnings, **meta)
    return Clip(info=info, waveform=mono)


def check_clip_args(path: str, offset: float = 0.0, duration: float | None = None) -> None:
    """The checks that need no decoding, so a bad path fails before a model is loaded."""
    if offset < 0:
        raise TracerError(f"--offset {offset:g}: must be 0 or more")
    if duration is not None and duration <= 0:
        raise TracerError(f"--duration {duration:g}: must be more than 0")
    file = Path(path)
    if not file.exists():
        raise TracerError(f"{path}: no such file")
    if file.is_dir():
        raise TracerError(f"{path}: is a directory, not an audio file")
    if file.stat().st_size == 0:
        raise TracerError(f"{path}: empty file")


class _NotSoundfile(Exception):
    """libsndfile cannot open this file: let librosa (audioread) try."""


def _window(rate: int, frames: int, offset: float, duration: float | None, max_seconds: float):
    start = int(round(offset * rate))
    if start >= frames:
        raise TracerError(f"--offset {offset:g}: past the end of the clip ({frames / rate:.2f} s)")
    length = min(duration if duration is not None else max_seconds, max_seconds)
    return start, min(frames, start + int(round(length * rate)))


def _wav_promised_frames(file: Path) -> int | None:
    """Frames a RIFF/WAVE header promises (its 'data' chunk over the block size), or None when the file is
    no WAV or the size is open-ended (0 or 0xFFFFFFFF: a stream). Only the header is read."""
    with open(file, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while len(chunk := f.read(8)) == 8:
            name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"fmt ":
                fmt = f.read(size)
                block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else None
                f.seek(size % 2, 1)  # chunks are padded to even sizes
            elif name == b"data":
                return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
            else:
                f.seek(size + size % 2, 1)
    return None


def probe_clip(path: str, offset: float = 0.0, duration: float | None = None) -> None:
    """Open the clip's header, decoding nothing (libsndfile's info; audioread's duration for what it cannot
    read): a file that is no audio, holds no samples, is cut short or ends before ``offset`` is refused
    before a model loads and a report starts."""
    check_clip_args(path, offset, duration)
    file = Path(path)
    try:
        info = _soundfile_info(file)
    except _NotSoundfile as e:
        _librosa_duration(file, offset, reason=str(e))
        return
    _window(info.samplerate, info.frames, offset, duration, 0.0)  # only its offset check: nothing is read


def _soundfile_info(file: Path):
    """libsndfile's view of the header, with the checks it allows; _NotSoundfile when it cannot open it."""
    import soundfile as sf
    try:
        info = sf.info(str(file))
    except (sf.SoundFileError, RuntimeError) as e:
        raise _NotSoundfile(str(e).splitlines()[0]) from None
    if info.frames == 0:
        raise TracerError(f"{file}: no samples (a valid {info.format} header with no audio data)")
    promised = _wav_promised_frames(file)
    if promised is not None and promised > info.frames:  # libsndfile reads what is there and says little
        raise TracerError(f"{file}: truncated (the header promises {promised:,} frames, the file holds "
                          f"{info.frames:,})")
    return info


def _read_soundfile(file: Path, offset, duration, max_seconds):
    import soundfile as sf
    info = _soundfile_info(file)
    warnings = []
    start, stop = _window(info.samplerate, info.frames, offset, duration, max_seconds)
    try:
        data, _ = sf.read(str(file), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        raise TracerError(f"{file}: corrupt or truncated {info.format} data ({str(e).splitlines()[0]})") from None
    meta = dict(format=info.format, subtype=info.subtype, source_sample_rate=info.samplerate,
                source_channels=info.channels, duration_s=round(info.frames / info.samplerate, 6),
                warnings=warnings)
    return data, meta


def _librosa_duration(file: Path, offset, reason: str) -> float:
    """The length audioread finds (its decoders' headers), checked against ``offset``."""
    import warnings as py_warnings

    import librosa
    try:
        with py_warnings.catch_warnings():
            py_warnings.simplefilter("ignore")
            total = librosa.get_duration(path=str(file))
    except Exception:  # noqa: BLE001 - audioread raises many unrelated types for "not audio"
        raise TracerError(f"{file}: not a readable audio file ({reason})") from None
    if offset >= total:
        raise TracerError(f"--offset {offset:g}: past the end of the clip ({total:.2f} s)")
    return total


def _read_librosa(file: Path, offset, duration, max_seconds, reason: str):
    import warnings as py_warnings

    import librosa
    length = min(duration if duration is not None else max_seconds, max_seconds)
    total = _librosa_duration(file, offset, reason)
    try:
        with py_warnings.catch_warnings():
            py_warnings.simplefilter("ignore")
            data, rate = librosa.load(str(file), sr=None, mono=False, offset=offset, duration=length)
    except Exception:  # noqa: BLE001 - audioread raises many unrelated types for "not audio"
        raise TracerError(f"{file}: not a readable audio file ({reason})") from None
    data = np.atleast_2d(data).T.astype(np.float32)  # librosa gives (channels, samples)
    meta = dict(format=file.suffix.lstrip(".").upper() or "?", subtype="decoded by audioread",
                source_sample_rate=int(rate), source_channels=data.shape[1], duration_s=round(total, 6),
                warnings=["decoded with librosa/audioread (libsndfile could not read it)"])
    return data, meta
