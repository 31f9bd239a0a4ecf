"""Text to speech for video voice-overs: SpeechT5 (text → mel spectrogram), its HiFi-GAN vocoder
(mel → 16 kHz waveform) and a speaker x-vector (the voice).

`SpeechSynthesizer(text, seed, max_seconds)` returns float32 mono samples at `sampling_rate`.
SpeechT5's decoder prenet keeps its dropout on at inference (it is part of the model's prosody),
so generation is seeded: the same text and seed give the same waveform. `max_seconds` caps the
autoregressive decoder (`maxlenratio`), so a voice-over never runs past what the reel can hold.

The tokenizer is SpeechT5's character-level SentencePiece model: no phonemizer or espeak binary.
`char_tokenizer` writes such a model offline for the tiny and random twins.
"""

from __future__ import annotations

import io
import string
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# SpeechT5's special ids: <s> 0, <pad> 1, </s> 2, <unk> 3; then the characters.
TWIN_CHARACTERS = string.ascii_letters + string.digits + " .,;:!?'\"-()&/%$@"
DEFAULT_MAX_LENRATIO = 20.0  # SpeechT5's own default: at most 10 mel frames per input token


@dataclass(frozen=True)
class SpeechSynthesizer:
    tokenizer: Any
    model: Any
    vocoder: Any
    speaker_embedding: torch.Tensor  # (1, speaker_embedding_dim)
    device: torch.device

    @property
    def sampling_rate(self) -> int:
        return int(self.vocoder.config.sampling_rate)

    @property
    def seconds_per_step(self) -> float:
        """Audio one decoder step adds: `reduction_factor` mel frames of one vocoder hop each."""
        hop = int(np.prod(self.vocoder.config.upsample_rates))
        return self.model.config.reduction_factor * hop / self.sampling_rate

    @torch.inference_mode()
    def __call__(self, text: str, seed: int, max_seconds: float) -> np.ndarray:
        limit = self.model.config.max_text_positions
        input_ids = self.tokenizer(text, return_tensors="pt")["input_ids"][:, :limit]
        steps = max(1, int(max_seconds / self.seconds_per_step))
        ratio = min(DEFAULT_MAX_LENRATIO,
                    steps * self.model.config.reduction_factor / input_ids.shape[1])
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            waveform = self.model.generate_speech(
                input_ids.to(self.device), self.speaker_embedding.to(self.device),
                maxlenratio=ratio, vocoder=self.vocoder)
        samples = waveform.float().cpu().numpy().reshape(-1)
        return samples[:int(max_seconds * self.sampling_rate)].astype(np.float32)


def char_tokenizer(folder: Path, characters: str = TWIN_CHARACTERS):
    """A SpeechT5Tokenizer over a character-level SentencePiece model written to `folder`
    (trained offline on `characters`, deterministic)."""
    import sentencepiece
    from transformers import SpeechT5Tokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([characters, characters[::-1]]), model_writer=model,
        model_type="char", vocab_size=len(set(characters)) + 4, character_coverage=1.0,
        bos_id=0, pad_id=1, eos_id=2, unk_id=3, minloglevel=2, num_threads=1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spm_char.model"
    path.write_bytes(model.getvalue())
    return SpeechT5Tokenizer(str(path))


def read_speaker_embedding(path: Path, speaker: str | None = None) -> np.ndarray:
    """A float32 x-vector from a `.npy` file, or from a zip of per-utterance `.npy` x-vectors
    (the CMU ARCTIC x-vectors): the L2-normalised mean over the members whose name contains
    `speaker`."""
    if path.suffix != ".zip":
        return np.load(path).astype(np.float32).reshape(-1)
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist()
                       if n.endswith(".npy") and (speaker is None or speaker in n))
        if not names:
            raise FileNotFoundError(f"{path} has no x-vector of speaker {speaker!r}")
        vectors = [np.load(io.BytesIO(archive.read(n))).reshape(-1) for n in names]
    mean = np.mean(vectors, axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
