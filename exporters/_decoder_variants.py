"""``optimize``'s variant link for text-generation packages, without torch.

A decoder cannot be judged on random inputs of its signature (its pasts must be its own presents,
and a fused GroupQueryAttention takes a multi-token step with a past at batch 1 only), so the
variants written by ``optimize`` (fp16, int8, int4) are compared with the validated ``model.onnx``
over prompts run from an empty past: random token ids of a few lengths, each prompt's logits at
every position (a teacher-forced run: the same logits a decode loop computes one step at a time)
and its presents (the key/value cache the next steps read).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from torchport.runtimes._errors import ValidationError, describe_error
from torchport.runtimes._generate import DecoderSpec
from torchport.runtimes._manifest import Manifest, TensorSpec
from torchport.runtimes._parity import ParityResult, Tolerance, VariantParity, compare_output, tolerance_for

__all__ = ["check_decoder_variants"]

#: prompt lengths the variants are compared at (capped by the package's seq range)
PROMPT_LENGTHS = (5, 12, 24, 48)


def _prompts(manifest: Manifest, n: int, seed: int) -> list[np.ndarray]:
    spec = next(s for s in manifest.inputs if s.name == "input_ids")
    low, high = spec.value_range or (0, 1)
    limit = int(DecoderSpec.from_manifest(manifest).max_seq)
    rng = np.random.default_rng(seed)
    lengths = [min(PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)], limit) for i in range(n)]
    return [rng.integers(int(low), int(high) + 1, (1, length)).astype(np.int64) for length in lengths]


def _runner(path: str | os.PathLike[str], spec: DecoderSpec, provider: str) -> object:
    from torchport.runtimes import Session

    sess = Session(path, providers=provider)

    def run(ids: np.ndarray) -> list[np.ndarray]:
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if spec.position_ids:
            feeds["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
        for name, heads, dim in zip(spec.past_names, spec.kv_heads, spec.head_dims, strict=True):
            feeds[name] = np.zeros((1, heads, 0, dim), np.dtype(spec.kv_dtype))
        out = sess.run(feeds, validate=False)
        return [out["logits"], *(out[n] for n in spec.present_names)]

    return run


def check_decoder_variants(
    manifest: Manifest,
    reference: str | os.PathLike[str],
    variant_files: Mapping[str, str | os.PathLike[str]],
    *,
    n: int = 4,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    provider: str = "cpu",
    seed: int = 0,
) -> ParityResult:
    """Compare each variant of a text-generation package with its fp32 ``model.onnx``.

    ``n`` prompts (lengths from :data:`PROMPT_LENGTHS`) run from an empty past in both; logits are
    compared at every position with the variant's tolerance (cosine and top-1 agreement for the
    quantized ones), presents with it minus the top-1 check.

    Raises:
        ValidationError: the fp32 model does not run.

    Example:
        >>> check_decoder_variants(manifest, "pkg/model.onnx", {"int4": "pkg/model.int4.onnx"})  # doctest: +SKIP
    """
    from dataclasses import replace

    start = time.perf_counter()
    spec = DecoderSpec.from_manifest(manifest)
    prompts = _prompts(manifest, max(1, min(n, 8)), seed)
    names = ["logits", *spec.present_names]
    try:
        run_ref = _runner(reference, spec, provider)
        refs = [run_ref(p) for p in prompts]  # type: ignore[operator]
    except Exception as e:  # noqa: BLE001 - the reference failing is fatal
        raise ValidationError(
            f"the fp32 model {Path(reference).name} does not run: {describe_error(e)}"
        ) from e
    variants: dict[str, VariantParity] = {}
    for variant, path in variant_files.items():
        tol = tolerance_for(variant, atol, rtol, tolerances)
        vp = VariantParity(variant=variant, file=Path(path).name, tolerance=tol, reference="fp32")
        variants[variant] = vp
        try:
            run = _runner(path, spec, provider)
            got = [run(p) for p in prompts]  # type: ignore[operator]
        except Exception as e:  # noqa: BLE001 - reported in the table
            vp.error = describe_error(e)
            continue
        for j, name in enumerate(names):
            # logits [1, seq, vocab] -> [seq, vocab]; presents [1, heads, seq, dim] -> [seq, heads*dim]
            ref_rows = [_rows(r[j], j) for r in refs]
            got_rows = [_rows(g[j], j) for g in got]
            out_tol = tol if j == 0 else replace(tol, min_top1=None)
            ts = TensorSpec(name, "float32", [None, None])
            vp.outputs.append(compare_output(ts, got_rows, ref_rows, out_tol, logits=j == 0))
    return ParityResult(
        model=f"{', '.join(variant_files)} of {manifest.name}",
        cases=[f"prompt of {p.shape[1]} tokens from an empty past" for p in prompts],
        variants=variants,
        provider=provider,
        seconds=time.perf_counter() - start,
        reference=f"{Path(reference).name} (fp32)",
    )


def _rows(arr: np.ndarray, index: int) -> np.ndarray:
    if index == 0:
        return arr[0]
    return np.moveaxis(arr[0], 1, 0).reshape(arr.shape[2], -1)
