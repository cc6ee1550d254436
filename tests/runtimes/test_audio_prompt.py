"""Whisper's forced prompt and suppressed tokens against Hugging Face ``generate`` (greedy, tiny random model).

The decoder runs in eager PyTorch here (the test checks the prompt and the masks, not an export):
each step takes the full sequence, the masks of :class:`WhisperPrompt` and argmax, and the tokens
must be Hugging Face's token for token.
"""

from __future__ import annotations

import numpy as np
import pytest

from torchport.runtimes._audio import AudioFeatures
from torchport.runtimes._audio_prompt import WhisperPrompt, whisper_settings
from torchport.runtimes._errors import InferenceInputError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

START, EOS, NOTIME = 50258, 50257, 50363
LANGS = {"<|en|>": 50259, "<|de|>": 50261, "<|fr|>": 50265}
TASKS = {"transcribe": 50359, "translate": 50358}


def _model() -> object:
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=51865,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=START,
        eos_token_id=EOS,
        pad_token_id=EOS,
        bos_token_id=EOS,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    model = transformers.WhisperForConditionalGeneration(config).eval()
    return model


def _settings(suppress: list[int], begin: list[int]) -> dict:
    return {
        "decoder_start_token_id": START,
        "lang_to_id": LANGS,
        "task_to_id": TASKS,
        "no_timestamps_token_id": NOTIME,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": begin,
        "is_multilingual": True,
        "max_length": 64,
    }


def _features() -> np.ndarray:
    rng = np.random.default_rng(1)
    audio = [(0.2 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (2, 5)]
    return AudioFeatures().extract(audio)


def _ours(
    model: object, feats: np.ndarray, prompt: WhisperPrompt, steps: int, **kw: object
) -> list[list[int]]:
    x = torch.from_numpy(feats)
    out = []
    with torch.no_grad():
        enc = model.model.encoder(x).last_hidden_state
        for row in range(x.shape[0]):
            detected = None
            if prompt.needs_detection(kw.get("language"), kw.get("task")):
                first = model(
                    encoder_outputs=(enc[row : row + 1],), decoder_input_ids=torch.tensor([[START]])
                )
                detected = prompt.detect_language(first.logits[:, -1].numpy())[0]
            ids = prompt.prompt(detected_language_id=detected, **kw)
            n0 = len(ids)
            for _ in range(steps):
                logits = model(
                    encoder_outputs=(enc[row : row + 1],), decoder_input_ids=torch.tensor([ids])
                ).logits
                scores = prompt.suppress(logits[0, -1].numpy().copy(), len(ids) - n0)
                ids.append(int(np.argmax(scores)))
                if ids[-1] == EOS:
                    break
            out.append(ids[n0:])
    return out


def _hf(model: object, feats: np.ndarray, settings: dict, steps: int, **kw: object) -> list[list[int]]:
    gen = transformers.GenerationConfig(**settings)
    with torch.no_grad():
        seqs = model.generate(
            torch.from_numpy(feats),
            generation_config=gen,
            max_new_tokens=steps,
            do_sample=False,
            num_beams=1,
            **kw,
        )
    return [[t for t in row.tolist()] for row in seqs]


def _trim(rows: list[list[int]]) -> list[list[int]]:
    return [r[: r.index(EOS) + 1] if EOS in r else r for r in rows]


_KWS = [{}, {"language": "fr"}, {"language": "de", "task": "translate"}, {"language": "en"}]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"language": "fr"},
        {"language": "de", "task": "translate"},
        {"language": "en", "return_timestamps": False},
    ],
)
def test_greedy_equals_hugging_face(kw: dict) -> None:
    model = _model()
    feats = _features()
    steps = 8
    # what the model picks unmasked is suppressed, then what it picks first instead is begin-suppressed
    plain = WhisperPrompt.from_settings(_settings([], []))
    suppress = sorted(
        {
            t
            for lang in ("en", "fr", "de")
            for row in _ours(model, feats, plain, 3, language=lang)
            for t in row
        }
    )
    masked = WhisperPrompt.from_settings(_settings(suppress, []))
    begin = sorted({row[0] for k in _KWS for row in _ours(model, feats, masked, 1, **k)})
    settings = _settings(suppress=suppress, begin=[*begin, 220])
    prompt = WhisperPrompt.from_settings(whisper_settings(settings))
    ours_kw = {k: v for k, v in kw.items() if k != "return_timestamps"}
    ours = _ours(model, feats, prompt, steps, **ours_kw)
    hf = _hf(model, feats, settings, steps, **kw)
    assert _trim(hf) == _trim(ours)
    unmasked = _hf(model, feats, _settings([], []), steps, **kw)
    assert _trim(unmasked) != _trim(ours)  # the masks changed what was generated


def test_prompt_errors_are_one_line() -> None:
    prompt = WhisperPrompt.from_settings(_settings([], []))
    with pytest.raises(InferenceInputError, match=r"^language 'xx' is not one of this model's 3 languages"):
        prompt.prompt(language="xx")
    with pytest.raises(
        InferenceInputError, match=r"^task must be one of transcribe, translate, got 'summarize'"
    ):
        prompt.prompt(language="en", task="summarize")
    english = WhisperPrompt.from_settings({**_settings([], []), "is_multilingual": False})
    with pytest.raises(InferenceInputError, match=r"English-only; do not pass a language"):
        english.prompt(language="fr")
    assert prompt.prompt(language="<|de|>", timestamps=True) == [START, LANGS["<|de|>"], TASKS["transcribe"]]
