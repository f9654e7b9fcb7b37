"""Granite Speech's log-mel front end with torch alone, for a machine without torchaudio.

transformers' ``GraniteSpeechFeatureExtractor`` computes its features with torchaudio's
``MelSpectrogram`` (a Hann-windowed power STFT, centred with reflect padding, then an HTK mel filterbank
with no normalisation), takes log10 with a floor of 1e-10, clamps to 8 decades below the clip's maximum,
scales to ``x / 4 + 1``, drops an odd last frame and stacks frames in pairs (80 mels -> 160 wide). The same
here with ``torch.stft`` and transformers' own ``mel_filter_bank``; ``tests/test_granite_mel.py`` holds the
output to numbers taken once from torchaudio on the same clips.
"""
from __future__ import annotations

import math


class GraniteLogMel:
    """Stands in for ``GraniteSpeechFeatureExtractor``: built from the same settings (a checkpoint's config
    as transformers reads it: the top-level keys, else its defaults), called the same way, returning the
    same ``input_features`` (batch x frames/2 x 2·mels), ``audio_embed_sizes`` and ``input_features_mask``."""

    model_input_names = ["input_features"]

    def __init__(self, sampling_rate: int = 16000, n_fft: int = 512, win_length: int = 400, hop_length: int = 160,
                 n_mels: int = 80, projector_window_size: int = 15, projector_downsample_rate: int = 5,
                 padding_value: float = 0.0, **_ignored):
        import torch
        from transformers.audio_utils import mel_filter_bank
        self.sampling_rate, self.n_fft, self.win_length, self.hop_length = sampling_rate, n_fft, win_length, hop_length
        self.n_mels = self.feature_size = n_mels
        self.projector_window_size, self.projector_downsample_rate = projector_window_size, projector_downsample_rate
        self.padding_value = padding_value
        # NB: torchaudio's defaults: f_min 0, f_max sample_rate / 2, norm None, mel_scale "htk" (frequencies x mels)
        self.filters = torch.from_numpy(mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
            max_frequency=sampling_rate / 2, sampling_rate=sampling_rate, norm=None, mel_scale="htk")).float()
        self.window = torch.hann_window(win_length)  # periodic, as torchaudio's window_fn

    def mel(self, audio):
        """(batch, samples) -> (batch, mels, frames): torchaudio.transforms.MelSpectrogram(sample_rate, n_fft,
        win_length, hop_length, n_mels) with its other defaults (power 2, centred, reflect padding)."""
        import torch
        spec = torch.stft(audio, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window.to(audio.device), center=True, pad_mode="reflect", normalized=False,
                          onesided=True, return_complex=True).abs().pow(2.0)
        return torch.matmul(spec.transpose(-1, -2), self.filters.to(audio.device)).transpose(-1, -2)

    def log_mel(self, audio):
        """GraniteSpeechFeatureExtractor._extract_mel_spectrograms, step by step."""
        import torch
        with torch.no_grad():
            logmel = self.mel(audio.float()).transpose(-1, -2).clip_(min=1e-10).log10_()
            top = logmel.amax(dim=(-2, -1), keepdim=True)
            logmel = torch.maximum(logmel, top - 8.0).div_(4).add_(1)
            if logmel.shape[1] % 2 == 1:  # an odd last frame is dropped
                logmel = logmel[:, :-1]
            return logmel.reshape(audio.shape[0], -1, 2 * logmel.shape[-1])

    def audio_embed_sizes(self, lengths) -> list:
        """LM tokens for each clip of ``lengths`` samples: ceil(encoder frames / window) windows, each
        ``window // downsample`` queries (GraniteSpeechFeatureExtractor._get_num_audio_features)."""
        per_window = self.projector_window_size // self.projector_downsample_rate
        return [math.ceil((n // self.hop_length + 1) // 2 / self.projector_window_size) * per_window
                for n in lengths]

    def __call__(self, audios, device: str | None = "cpu"):
        import numpy as np
        import torch
        from transformers import BatchFeature
        if isinstance(audios, np.ndarray) or isinstance(audios, torch.Tensor):
            audios = [audios]
        clips = [torch.as_tensor(a).reshape(-1) for a in audios]
        if not all(torch.is_floating_point(c) for c in clips):
            raise ValueError("Invalid audio provided. Audio should be a floating point between 0 and 1")
        lengths = [c.shape[-1] for c in clips]
        batch = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True, padding_value=0.0)
        if device is not None:
            batch = batch.to(device)
        sizes = self.audio_embed_sizes(lengths)
        mask = torch.arange(max(sizes)).view(1, -1) < torch.tensor(sizes).view(-1, 1)
        return BatchFeature(data={"input_features": self.log_mel(batch), "audio_embed_sizes": sizes,
                                  "input_features_mask": mask})

    def __repr__(self):
        return (f"GraniteLogMel(sampling_rate={self.sampling_rate}, n_fft={self.n_fft}, win_length={self.win_length}, "
                f"hop_length={self.hop_length}, n_mels={self.n_mels})")
