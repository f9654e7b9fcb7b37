"""A checkpoint's processor, resolved by what its parts are: a processor, a tokenizer and a feature extractor
found apart (and joined when the family's processor builds the prompt), a feature extractor alone (no
full_forward), a front end that needs a package this machine lacks (a torch-only one where we have it)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .assets import BUILTIN_MODEL_DIR
from ..errors import TracerError, first_line


class _quiet_transformers:
    def __enter__(self):
        from transformers.utils import logging as hf_logging
        self._level = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity(self._level)
        if self._bars:
            hf_logging.enable_progress_bar()


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# what a tokenizer saves: its config, or a vocabulary in one of the usual forms
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "tekken.json")
# packages a family's processor may need, and the extra of ours that installs them
PROCESSOR_EXTRAS = {"torchaudio": "granite", "mistral-common": "families", "mistral_common": "families",
                    "sentencepiece": "families", "timm": "families"}
# an import name whose package on PyPI is named otherwise (transformers 4.57's Phi-4 processor: PIL)
PIP_NAMES = {"PIL": "Pillow"}


@dataclass
class AudioParts:
    """What stands in for a processor when a checkpoint ships none that loads: its tokenizer and its feature
    extractor, each found on its own (None when it ships none). The family builders take it where they take
    a processor (``.tokenizer``, ``.feature_extractor``); a family whose builder calls a processor gets one
    joined from the two (``inputs.families.processor_from_parts``)."""
    tokenizer: Any = None
    feature_extractor: Any = None
    declared: str | None = None  # the processor class the checkpoint's files name, if any
    found: str = ""  # how they were found, for the report's note
    no_full: str = ""  # why full_forward cannot run on them, when a tokenizer is not the reason

    def no_tokenizer(self) -> str:
        """Why full_forward cannot run when no tokenizer was found."""
        return (f"{self.found or 'no tokenizer'}: full_forward needs its tokenizer for the prompt and the target; "
                "pass a directory that has it (audio_tower runs on the feature extractor alone)")


def _load_processor(directory: Path, trust_remote_code: bool):
    """The checkpoint's own processor; else what it ships of one, each part found on its own: AudioParts of
    its tokenizer and its feature extractor (one may be None); None when it ships neither. What
    AutoProcessor returns is checked for what it is: without a processor config it hands back the bare
    tokenizer (or feature extractor), and without a tokenizer file it builds an empty tokenizer into the
    processor. A part it ships that cannot load is an error naming why (a missing package above all), never
    a silent substitute."""
    from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer, ProcessorMixin

    ships_tokenizer = any((directory / f).is_file() for f in TOKENIZER_FILES)
    ships_config = any((directory / f).is_file() for f in PROCESSOR_FILES)
    ships_extractor = _declares_extractor(directory)
    if not ships_tokenizer and not ships_config:
        return None  # NB: AutoProcessor would build one from the model type alone, with nothing of the checkpoint's
    failure = None
    try:
        with _quiet_transformers():  # its deprecation notices (Fast image processors) are not the user's to fix
            found = processor_parts(AutoProcessor.from_pretrained(directory, trust_remote_code=trust_remote_code))
    except Exception as e:  # noqa: BLE001 - a processor that needs parts this checkpoint lacks, among others
        # NB: a package it lacks may serve another input only (torchvision for Phi-4's image processor): the
        # audio parts are looked for on their own, and the package is named below if they cannot do without it
        found, failure = None, e
    declared = _declared_processor(directory)
    if isinstance(found, ProcessorMixin):
        tokenizer = getattr(found, "tokenizer", None)
        if _audio_part(found) is not None and (ships_tokenizer or tokenizer is None):
            return found
        # no audio part (a processor for other inputs), or a tokenizer made from nothing: keep what is the
        # checkpoint's and look for the rest on its own
        found = AudioParts(tokenizer=tokenizer if ships_tokenizer else None, feature_extractor=_audio_part(found))
    parts = found if isinstance(found, AudioParts) else AudioParts()
    torch_only = None
    for name, ships, loader in (("tokenizer", ships_tokenizer, AutoTokenizer),
                                ("feature_extractor", ships_config, AutoFeatureExtractor)):
        if getattr(parts, name) is None and ships:
            try:
                with _quiet_transformers():
                    setattr(parts, name, loader.from_pretrained(directory, trust_remote_code=trust_remote_code))
            except ImportError as e:
                torch_only = _torch_only_extractor(directory, e) if name == "feature_extractor" else None
                if torch_only is None:
                    raise TracerError(_missing_package(directory, e)) from None
                parts.feature_extractor, failure = torch_only, failure or e
            except Exception as e:  # noqa: BLE001 - reported below when it leaves nothing to use
                failure = failure or e
    if isinstance(failure, ImportError) and parts.feature_extractor is None:  # the audio needs that package too
        raise TracerError(_missing_package(directory, failure))
    nothing = parts.tokenizer is None and parts.feature_extractor is None
    if failure is not None and (nothing or parts.feature_extractor is None and ships_extractor):
        # what it ships is broken (its own extractor above all): no substitute
        raise TracerError(f"--model {directory}: its processor does not load ({first_line(failure)})")
    if nothing:
        return None
    parts.declared = declared
    parts.found = _parts_found(parts, declared, failure)
    if torch_only is not None:
        theirs = TORCH_ONLY_EXTRACTORS[type(torch_only).__name__]
        head = f"its processor ({declared})" if declared else f"its {theirs}"
        tokenizer = (f"its tokenizer ({type(parts.tokenizer).__name__}) loaded on its own, and "
                     if parts.tokenizer is not None else "no tokenizer; ")
        parts.found = (f"{head} needs {_missing_name(failure)}, which is not installed: {tokenizer}its {theirs}'s "
                       f"log-mel computed with torch alone, the same settings ({torch_only!r})")
    return parts


# an extractor transformers computes through a package this one does without, and who does: theirs -> ours
TORCH_ONLY = {"GraniteSpeechFeatureExtractor": ("torchaudio", "tracer.load.granite_mel", "GraniteLogMel")}
TORCH_ONLY_EXTRACTORS = {ours: theirs for theirs, (_, _, ours) in TORCH_ONLY.items()}


def _torch_only_extractor(directory: Path, error: ImportError):
    """For a feature extractor that needs a package not installed here only for what torch computes as
    well (Granite's log-mel through torchaudio): ours, built from the checkpoint's settings; else None."""
    import importlib
    values = _extractor_config(directory)
    entry = TORCH_ONLY.get((values or {}).get("feature_extractor_type"))
    if entry is None or _missing_name(error) != entry[0]:
        return None
    return getattr(importlib.import_module(entry[1]), entry[2])(**values)


def _extractor_config(directory: Path) -> dict | None:
    """The feature extractor's settings as the checkpoint saved them: preprocessor_config.json, or the
    audio entry of processor_config.json (transformers 5 writes one entry a part)."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "feature_extractor"),
                      ("processor_config.json", "audio_processor")):
        try:
            values = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        values = values.get(key) if key and isinstance(values, dict) else values
        if isinstance(values, dict) and "feature_extractor_type" in values:
            return values
    return None


def processor_parts(found, source: str = "its processor"):
    """``found`` for what it is: a processor is returned as it is; a bare tokenizer or feature extractor
    (what AutoProcessor returns when no processor config joins them, or what a caller passes) becomes
    AudioParts with the other part None. Anything else is returned as it is (a caller's own object)."""
    from transformers import FeatureExtractionMixin, PreTrainedTokenizerBase, ProcessorMixin

    if found is None or isinstance(found, (ProcessorMixin, AudioParts)):
        return found
    if isinstance(found, PreTrainedTokenizerBase):
        return AudioParts(tokenizer=found, found=f"{source} is a tokenizer ({type(found).__name__}), no feature "
                                                 "extractor")
    if isinstance(found, FeatureExtractionMixin):
        return AudioParts(feature_extractor=found,
                          found=f"{source} is a feature extractor ({type(found).__name__}), no tokenizer")
    return found


def _audio_part(processor):
    return getattr(processor, "feature_extractor", None) or getattr(processor, "audio_processor", None)


def _declares_extractor(directory: Path) -> bool:
    """Whether the checkpoint's processor files name a feature extractor of their own (an image model's
    name only an image processor)."""
    for name, keys in (("preprocessor_config.json", ("feature_extractor_type",)),
                       ("processor_config.json", ("feature_extractor", "audio_processor"))):
        try:
            values = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(values, dict) and any(k in values for k in keys):
            return True
    return False


def _declared_processor(directory: Path) -> str | None:
    """The processor class the checkpoint's files name (``processor_class``), if any."""
    for name in (*PROCESSOR_FILES, "tokenizer_config.json"):
        try:
            value = json.loads((directory / name).read_text()).get("processor_class")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value:
            return value
    return None


def _parts_found(parts, declared: str | None, failure: Exception | None) -> str:
    """How the parts were found, for the report: what ships, and why no processor joins them."""
    tokenizer, extractor = (type(parts.tokenizer).__name__ if parts.tokenizer is not None else None,
                            type(parts.feature_extractor).__name__ if parts.feature_extractor is not None else None)
    if tokenizer and extractor:
        what = f"its tokenizer ({tokenizer}) and feature extractor ({extractor}) loaded on their own"
        what = what if declared and failure is not None else "the checkpoint ships no processor config: " + what
    elif extractor:
        what = f"the checkpoint ships a feature extractor ({extractor}) and no tokenizer"
    else:
        what = f"the checkpoint ships a tokenizer ({tokenizer}) and no feature extractor"
    if declared and failure is not None:
        package = _missing_name(failure) if isinstance(failure, ImportError) else None
        why = f"needs {package}, which is not installed" if package else f"does not load here ({_short(failure)})"
        return f"its processor ({declared}) {why}; {what}"
    return what


def _short(error: Exception, limit: int = 100) -> str:
    text = first_line(error)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _missing_name(error: Exception) -> str | None:
    """The package an ImportError (or transformers' "requires the X library") names, as pip spells it."""
    match = re.search(r"requires the ([\w\-]+) library", str(error)) or re.search(r"No module named '([\w\-]+)'",
                                                                                 str(error))
    return None if match is None else PIP_NAMES.get(match.group(1), match.group(1).replace("_", "-").lower())


def _missing_package(directory: Path, error: Exception, what: str = "its processor") -> str:
    package = _missing_name(error)
    if package is None:
        return f"--model {directory}: {what} fails ({first_line(error)})"
    extra = PROCESSOR_EXTRAS.get(package)
    hint = f"pip install {package}" + (f" (or pip install -e '.[{extra}]')" if extra else "")
    return f"--model {directory}: {what} needs {package}, which is not installed: {hint}"


def processor_for(loaded: LoadedModel, encoder=None, family=None):
    """(processor, note): the checkpoint's processor (or the parts of one it ships); where it has no feature
    extractor, the one ``family`` (a families.Family) names, else the built-in one fitted to
    ``encoder``'s config (mel bins, and the frames its positions allow), so a small encoder gets the input it
    expects; where it has neither part, the built-in tokenizer with that extractor. The note says what was
    put in the checkpoint's place, and how its parts were found."""
    processor = loaded.processor
    if processor is not None and not (isinstance(processor, AudioParts) and processor.feature_extractor is None):
        return processor, (processor.found or None) if isinstance(processor, AudioParts) else None
    from transformers import AutoProcessor
    builtin = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR)
    if processor is None:
        head, tokenizer = "this model has no processor", "the built-in tokenizer"
        processor = builtin
    else:  # a tokenizer of its own, no feature extractor
        head, tokenizer = processor.found or "it ships no feature extractor", "its own tokenizer"
        processor = replace(processor, feature_extractor=builtin.feature_extractor)
    if getattr(family, "feature_extractor", None) is not None:  # the family knows its extractor better than ours
        processor.feature_extractor = family.feature_extractor()
        return processor, (f"{head}: using {type(processor.feature_extractor).__name__}(), as the {family.name} "
                           f"family takes, and {tokenizer}")
    fitted = _fit_feature_extractor(processor.feature_extractor, encoder)
    if fitted is None:
        return processor, f"{head}: using the built-in one (WhisperFeatureExtractor, 128 mels) and {tokenizer}"
    processor.feature_extractor = fitted
    return processor, (f"{head}: using a WhisperFeatureExtractor fitted to its encoder "
                       f"({fitted.feature_size} mels, {fitted.nb_max_frames} frames = {fitted.chunk_length:g} s) "
                       f"and {tokenizer}")


def _fit_feature_extractor(fe, encoder):
    """A copy of ``fe`` with the encoder's mel bins and window (positions x the convs' strides, as
    Whisper-style encoders check), or None when it already fits or the encoder says nothing."""
    config = getattr(encoder, "config", None)
    mels, positions = getattr(config, "num_mel_bins", None), getattr(config, "max_source_positions", None)
    if not mels or not positions:
        return None
    stride = 1
    for conv in ("conv1", "conv2"):
        stride *= getattr(getattr(encoder, conv, None), "stride", (1,))[0]
    frames = positions * stride
    if (mels, frames) == (fe.feature_size, fe.nb_max_frames):
        return None
    from transformers import WhisperFeatureExtractor
    fitted = WhisperFeatureExtractor(feature_size=mels, sampling_rate=fe.sampling_rate, hop_length=fe.hop_length,
                                     n_fft=fe.n_fft, padding_value=fe.padding_value)
    fitted.nb_max_frames = frames
    fitted.n_samples = frames * fe.hop_length
    fitted.chunk_length = fitted.n_samples / fe.sampling_rate
    return fitted
