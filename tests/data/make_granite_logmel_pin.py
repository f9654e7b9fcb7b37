"""Writes granite_logmel_torchaudio.json beside this file: transformers' GraniteSpeechFeatureExtractor (which
computes through torchaudio) on the shipped clip, whole and cut, as fingerprints that
tests/test_granite_mel.py holds tracer.load.granite_mel.GraniteLogMel (torch alone) to.

Run it once where torchaudio installs, from the repository root, in a venv of its own (torchaudio must match
its torch build; on x86_64 PyPI's torch 2.9.1 pairs with torchaudio 2.9, about 7 GB with its CUDA libraries,
which the computation does not use):

    python3 -m venv /tmp/ta29
    /tmp/ta29/bin/pip install torch==2.9.1 'torchaudio==2.9.*' transformers==5.24.0 soundfile
    /tmp/ta29/bin/python tests/data/make_granite_logmel_pin.py

and commit the JSON with the versions it records.
"""
import json
import re
from pathlib import Path

import soundfile
import torch
import torchaudio
import transformers
from transformers import GraniteSpeechFeatureExtractor

ROOT = Path(__file__).resolve().parents[2]
CLIPS = {"whole": None, "cut_53760": 53760}  # 53,760 samples: 337 mel frames, the odd last one dropped
SAMPLED = 64  # entries pinned one by one, spread over the tensor


def fingerprint(features: torch.Tensor) -> dict:
    """What a test can hold a (1, frames, 160) tensor to: its shape, each frame's sum, each column's sum, and
    SAMPLED entries at positions spread by two primes."""
    f = features[0].double()
    frames, width = f.shape
    picks = [((k * 7919) % frames, (k * 104729) % width) for k in range(SAMPLED)]
    return {"shape": list(features.shape), "frame_sums": [round(float(v), 6) for v in f.sum(1)],
            "column_sums": [round(float(v), 6) for v in f.sum(0)],
            "entries": [[i, j, round(float(f[i, j]), 7)] for i, j in picks]}


def main():
    waveform, rate = soundfile.read(ROOT / "samples" / "sample.wav", dtype="float32")
    extractor = GraniteSpeechFeatureExtractor()
    pins = {"made_with": {"torch": torch.__version__, "torchaudio": torchaudio.__version__,
                          "transformers": transformers.__version__},
            "extractor": extractor.melspec_kwargs, "clips": {}}
    for name, samples in CLIPS.items():
        clip = waveform[:samples]
        out = extractor([clip])
        pins["clips"][name] = {"samples": len(clip), "audio_embed_sizes": list(out["audio_embed_sizes"]),
                               **fingerprint(out["input_features"])}
    target = Path(__file__).with_name("granite_logmel_torchaudio.json")
    text = json.dumps(pins, indent=1)  # each list of numbers on one line
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    target.write_text(text + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
