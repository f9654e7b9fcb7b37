"""Loading: the model (built-in tiny, local dir, hub cache, or a bare config on meta) and its processor."""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .assets import BUILTIN_MODEL_DIR
from ..errors import TracerError, first_line, read_json_object
from .processors import _load_processor, _missing_package, _quiet_transformers
from .seeding import seeded

DTYPES = ("auto", "float32", "bfloat16", "float16")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class LoadedModel:
    """A model ready to trace, with what the report must say about where it came from."""
    model: Any
    processor: Any | None
    name: str
    source: str  # "builtin" | "named" | "dir" | "hub" | "config"
    on_meta: bool
    directory: Path | None = None  # the checkpoint directory it came from, if any
    processor_error: str | None = None  # static_only: why its processor did not load (the structure needs none)


def resolve_device(spec: str):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' → torch.device, checked against this machine."""
    import torch
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise TracerError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise TracerError(f"--device {spec}: no such GPU (this machine has {torch.cuda.device_count()})")
        return torch.device(spec)
    raise TracerError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")


def resolve_dtype(spec: str, device):
    """'auto' is bfloat16 on CUDA (what LoRA fine-tunes use) and float32 on CPU."""
    import torch
    if spec not in DTYPES:
        raise TracerError(f"--dtype {spec!r}: choose one of {', '.join(DTYPES)}")
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec)


def load_builtin(device, dtype) -> LoadedModel:
    """The real Qwen2AudioForConditionalGeneration from the shipped tiny config, random weights, seed 0."""
    from transformers import (
        AutoProcessor,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
    )
    config = Qwen2AudioConfig.from_pretrained(BUILTIN_MODEL_DIR)
    with seeded():  # built on the CPU, then moved
        model = Qwen2AudioForConditionalGeneration(config)
    model = model.to(device=device, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR)
    return LoadedModel(model, processor, "builtin tiny Qwen2-Audio", "builtin", False)


def load_model(model: str | None = None, config: str | None = None, *, device, dtype,
               static_only: bool = False, trust_remote_code: bool = False,
               allow_pickle: bool = False, device_map: str | None = None,
               progress=lambda text: None) -> LoadedModel:
    """Load what the CLI flags name. Raises TracerError with a one-line reason on bad input; ``progress``
    hears about long work (building a named model on first use)."""
    if model and config:
        raise TracerError("--model and --config exclude each other: --config builds a model from a config file alone")
    if device_map and not model:
        raise TracerError("--device-map needs --model: it places a checkpoint's weights as they load")
    if config:
        return _build_from_config_file(config, device, dtype, static_only, trust_remote_code)
    if model:
        directory, source = _resolve_model_dir(model, progress)
        return _load_pretrained(directory, model, source, device, dtype, trust_remote_code, allow_pickle,
                                device_map, static_only)
    return load_builtin(device, dtype)


def _resolve_model_dir(spec: str, progress=lambda text: None) -> tuple[Path, str]:
    from . import named
    path = Path(spec).expanduser()
    if spec in named.NAMES and not path.exists():
        return named.model_dir(spec, progress), "named"
    if path.exists():
        if not path.is_dir():
            raise TracerError(f"--model {spec}: not a directory (pass a checkpoint directory or a hub id)")
        return path, "dir"
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise TracerError(f"--model {spec}: no such directory{_named_near_miss(spec)}")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id=spec, local_files_only=True)), "hub"
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        # NB: `hf` is huggingface_hub's CLI now; its old `huggingface-cli` is gone from current installs
        raise TracerError(f"--model {spec}: not in the local Hugging Face cache, and this tool does not download; "
                          f"run `hf download {spec}` where the hub is reachable, or pass a directory") from None


def _named_near_miss(spec: str) -> str:
    """'; did you mean whisper-tiny.en?' for a bare name close to a named model's, else ''."""
    import difflib

    from .named import NAMES
    if "/" in spec:
        return ""
    close = difflib.get_close_matches(spec.lower(), NAMES, n=1, cutoff=0.75)
    return f", nor a named model; did you mean {close[0]}?" if close else ""


def _load_config(path: Path, trust_remote_code: bool):
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise TracerError(f"{path}: this checkpoint ships its own code; rerun with --trust-remote-code "
                              "if you trust it") from None
        raise TracerError(f"{path}: {first_line(e)}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise TracerError(f"{path}: cannot read config.json ({first_line(e)})") from None


def _load_pretrained(directory: Path, name: str, source: str, device, dtype,
                     trust_remote_code: bool, allow_pickle: bool, device_map: str | None = None,
                     static_only: bool = False) -> LoadedModel:
    if not (directory / "config.json").is_file():
        raise TracerError(f"--model {name}: no config.json in {directory}")
    config = _load_config(directory, trust_remote_code)
    files = [p.name for p in directory.iterdir()]
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    has_pickle = any(f.endswith(PICKLE_SUFFIXES) for f in files)
    if not has_safetensors and has_pickle and not allow_pickle:
        raise TracerError(f"--model {name}: only pickle weights (.bin) found; unpickling can run arbitrary code, "
                          "so pass --allow-pickle if you trust this checkpoint")
    if not has_safetensors and not has_pickle:
        raise TracerError(f"--model {name}: no weights (*.safetensors) in {directory}")
    _check_quantization_package(config, name)
    model_cls = _model_class(config, trust_remote_code)
    try:
        with _quiet_transformers():  # its multi-line load report would break the one-line error contract
            model = model_cls.from_pretrained(directory, dtype=dtype, use_safetensors=has_safetensors or None,
                                              trust_remote_code=trust_remote_code, device_map=device_map)
    except Exception as e:  # noqa: BLE001 - mismatched or corrupt weights surface here in many types
        if isinstance(e, ImportError) or re.search(r"requires the [\w\-]+ library", str(e)):
            raise TracerError(_missing_package(directory, e, "building it")) from None
        if "ignore_mismatched_sizes" in str(e) or "size mismatch" in str(e):
            raise TracerError(f"--model {name}: the weights' shapes do not match config.json (a config edited "
                              "after saving, or weights of another model)") from None
        raise TracerError(f"--model {name}: cannot load weights ({first_line(e)})") from None
    # NB: with a device map accelerate has placed (and maybe offloaded) every layer: moving it would undo that
    model = (model if device_map else model.to(device)).eval()
    try:
        processor, processor_error = _load_processor(directory, trust_remote_code), None
    except TracerError as e:
        if not static_only:
            raise
        # NB: the static report needs no processor: a missing package (Granite's torchaudio) or a broken one
        # is the clip section's to say, not a reason to stop
        processor, processor_error = None, str(e)
    return LoadedModel(model, processor, name, source, False, directory, processor_error)


def _check_quantization_package(config, name: str) -> None:
    """A checkpoint saved in 4-bit or 8-bit by bitsandbytes (config.json's quantization_config) loads only with
    bitsandbytes installed: say so in one line, before transformers' longer error."""
    import importlib.util
    quant = getattr(config, "quantization_config", None)
    quant = quant if isinstance(quant, dict) else quant.to_dict() if quant is not None else {}
    if str(quant.get("quant_method", "")).rsplit(".", 1)[-1].lower() not in ("bitsandbytes", "bits_and_bytes"):
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        bits = "4-bit" if quant.get("load_in_4bit") else "8-bit" if quant.get("load_in_8bit") else "quantized"
        raise TracerError(f"--model {name}: its weights are bitsandbytes {bits} (quantization_config in "
                          "config.json), which needs bitsandbytes, not installed: pip install bitsandbytes "
                          "(or pip install -e '.[qlora]')")


def input_device(model, default):
    """Where inputs go: the device of the first parameter (a device-mapped model's entry layers)."""
    first = next((p for p in model.parameters() if p.device.type != "meta"), None)
    return first.device if first is not None else default


def _build_from_config_file(path: str, device, dtype, static_only: bool, trust_remote_code: bool) -> LoadedModel:
    import torch
    from transformers import AutoConfig
    file = Path(path)
    values = read_json_object(path, "--config")
    if "model_type" not in values:
        raise TracerError(f"--config {path}: no 'model_type' key (is this a transformers config.json?)")
    model_type = values.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **values)
    except (ValueError, KeyError) as e:
        raise TracerError(f"--config {path}: unknown model_type {model_type!r} ({first_line(e)})") from None
    model_cls = _model_class(config, trust_remote_code)
    # NB: on meta no memory is allocated, so a 7B config reports in seconds.
    with torch.device("meta"):
        model = model_cls._from_config(config, dtype=dtype)
    if not static_only:
        _check_fits(model, path, device, dtype)
        with seeded([device]), device:  # built where it runs: that device's generator draws the weights
            model = model_cls._from_config(config, dtype=dtype)
    return LoadedModel(model.eval(), None, file.name, "config", static_only)


def _check_fits(meta_model, path: str, device, dtype) -> None:
    """Refuse a random-weight build the machine cannot hold, rather than be killed by the OOM killer."""
    import torch
    need = sum(p.numel() for p in meta_model.parameters()) * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need * 1.5 > free:  # weights, plus room for activations and LoRA gradients
        raise TracerError(f"--config {path}: {need / 2**30:.1f} GiB of {str(dtype).replace('torch.', '')} weights "
                          f"do not fit in the {free / 2**30:.1f} GiB free on {device.type}; add --static-only for "
                          "the structure, or use a smaller config, --dtype bfloat16 or a GPU")


def _model_class(config, trust_remote_code: bool):
    import transformers
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    for auto_name in ("AutoModelForCausalLM", "AutoModelForSpeechSeq2Seq", "AutoModel"):
        auto = getattr(transformers, auto_name)
        if type(config) in auto._model_mapping:
            return auto._model_mapping[type(config)]
    raise TracerError(f"no model class for config {type(config).__name__} "
                      f"(model_type {getattr(config, 'model_type', '?')!r})")


def check_output_path(path: str, flag: str) -> None:
    """Fail before any heavy work if an output file could not be written."""
    target = Path(path)
    if target.is_dir():
        raise TracerError(f"{flag} {path}: is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise TracerError(f"{flag} {path}: directory {parent} does not exist")
    try:  # NB: os.access says yes to root even on /proc or a read-only mount: try for real
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise TracerError(f"{flag} {path}: cannot write in {parent} ({e.strerror})") from None
