"""Carry a Hugging Face speech folder's feature-extractor settings into the package.

When the source folder holds ``preprocessor_config.json`` for a ``WhisperFeatureExtractor``, the
package gets a copy (hashed like every package file) and the manifest's ``extra["audio"]`` records
what :class:`torchport.runtimes._audio.AudioFeatures` needs to compute ``input_features`` from audio
without transformers or torch:

    {"feature_extractor": "preprocessor_config.json", "files": ["preprocessor_config.json"],
     "feature_size": 80, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30,
     "n_fft": 400, "padding_value": 0.0}

A folder without the file gets Whisper's defaults for the model's ``num_mel_bins``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torchport.exporters._text_assets import source_folder
from torchport.runtimes._audio import AudioFeatures

__all__ = ["PREPROCESSOR_FILE", "copy_audio_assets"]

PREPROCESSOR_FILE = "preprocessor_config.json"


def copy_audio_assets(reference: str, dest: Path, config: Any = None) -> dict[str, Any]:
    """Copy ``reference``'s ``preprocessor_config.json`` into ``dest``; return ``extra["audio"]``.

    Args:
        reference: the Hugging Face folder (``folder`` or ``folder:component``).
        dest: the package folder being written.
        config: the model's Hugging Face config (its ``num_mel_bins`` when the folder has no file).

    Raises:
        InferenceInputError: the file names another extractor or holds out-of-range settings.
    """
    folder = source_folder(reference)
    source = folder / PREPROCESSOR_FILE if folder is not None else None
    if source is not None and source.is_file():
        features = AudioFeatures.from_config(json.loads(source.read_text()))
        shutil.copyfile(source, Path(dest) / PREPROCESSOR_FILE)
        return {"feature_extractor": PREPROCESSOR_FILE, "files": [PREPROCESSOR_FILE], **features.to_dict()}
    mels = getattr(config, "num_mel_bins", None)
    features = AudioFeatures(feature_size=int(mels)) if isinstance(mels, int) else AudioFeatures()
    return {"feature_extractor": None, "files": [], **features.to_dict()}
