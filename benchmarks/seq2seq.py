"""Encoder-decoder generation speed: Whisper (speech to text) and T5 (text to text), torchport vs peers.

Rows, one process, one machine (2 threads unless --threads): Hugging Face eager PyTorch (the
baseline), torchport's package through its torch-free generate loop, Optimum's ORTModelForSpeechSeq2Seq
/ ORTModelForSeq2SeqLM (from its own ``.venv-optimum`` when not importable here) and
onnxruntime-genai's Whisper where it is installed. Random weights at the real shapes (Whisper-tiny:
d_model 384, 4+4 layers; T5-small: d_model 512, 6+6 layers): the speed is the shape's, not the
weights'. Every row generates exactly ``--new-tokens`` tokens (EOS suppressed), greedy.

Whisper: 10 s of audio (a chirp plus noise), pre-processing included (torchport's numpy log-mel vs
``WhisperFeatureExtractor``); reported as seconds, real-time factor (seconds per second of audio)
and tokens/s. T5: a 64-token input generating 64 tokens.

    python benchmarks/seq2seq.py [--tiny] [--new-tokens 64] [--repeats 3] [--no-peers] [--no-server]

A row that cannot run here says why (not installed, the package cannot generate yet) instead of a figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RATE = 16000

#: model shapes: (Whisper config kwargs, T5 config kwargs)
SHAPES = {
    "real": (
        {"d_model": 384, "encoder_layers": 4, "decoder_layers": 4, "encoder_attention_heads": 6,
         "decoder_attention_heads": 6, "encoder_ffn_dim": 1536, "decoder_ffn_dim": 1536},
        {"d_model": 512, "d_ff": 2048, "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8, "d_kv": 64},
    ),
    "tiny": (
        {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
         "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64},
        {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2, "d_kv": 16},
    ),
}  # fmt: skip


def test_audio(seconds: float = 10.0) -> np.ndarray:
    """A chirp from 100 Hz to 4 kHz plus a little noise (speech-like energy over the mel range)."""
    t = np.arange(int(seconds * RATE)) / RATE
    chirp = 0.4 * np.sin(2 * np.pi * (100 * t + (4000 - 100) / (2 * seconds) * t**2))
    return (chirp + 0.02 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def word_tokenizer(folder: Path, vocab: int, special: dict[int, str]) -> None:
    """A word-level ``tokenizer.json`` (``w<id>`` words; ``special`` ids marked special) so the package
    decodes text and the server answers with it."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = {special.get(i, f"w{i}"): i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token=special.get(0, "w0")))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in special.values()])
    tok.save(str(folder / "tokenizer.json"))


def build_whisper(folder: Path, shape: dict[str, int]) -> None:
    """A random-weight Whisper folder (config, generation config, preprocessor config)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=51865, num_mel_bins=80, max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257, bos_token_id=50257, **shape,
    )  # fmt: skip
    model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257, max_length=448,
        lang_to_id={"<|en|>": 50259}, task_to_id={"transcribe": 50359, "translate": 50358},
        no_timestamps_token_id=50363, is_multilingual=True, begin_suppress_tokens=[220, 50257],
        suppress_tokens=list(range(50364, 51865)),  # timestamps: random weights would pick them
    )  # fmt: skip
    model.save_pretrained(folder)
    transformers.WhisperFeatureExtractor().save_pretrained(folder)
    word_tokenizer(folder, 51865, {i: f"<|s{i}|>" for i in range(50257, 51865)})


def build_t5(folder: Path, shape: dict[str, int]) -> None:
    """A random-weight T5 folder."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=32128, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, **shape
    )
    transformers.T5ForConditionalGeneration(config).eval().save_pretrained(folder)
    word_tokenizer(folder, 32128, {0: "<pad>", 1: "</s>", 2: "<unk>"})


def best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls (after one warm-up) and the last result (the features rows)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def interleaved(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float | None, Any]]:
    """Median seconds per runner over ``repeats`` rounds, each round timing every runner once in turn
    (after one warm-up call each), so load that drifts on a shared machine hits every runner alike.
    A runner that raises gets ``(None, "TypeName: message")``."""
    outs: dict[str, Any] = {}
    times: dict[str, list[float]] = {k: [] for k in runners}
    live = dict(runners)
    for rnd in range(repeats + 1):
        for name, fn in list(live.items()):
            t0 = time.perf_counter()
            try:
                outs[name] = fn()
            except Exception as e:  # a runner that cannot run here: report, do not hide
                outs[name] = f"{type(e).__name__}: {str(e)[:80]}"
                del live[name]
                continue
            if rnd:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(times[k]) if k in live else None, outs[k]) for k in runners}


def hf_whisper(folder: Path, audio: np.ndarray, new: int) -> Callable[[], list[int]]:
    import torch
    import transformers

    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(folder)

    def run() -> list[int]:
        feats = extractor(audio, sampling_rate=RATE, return_tensors="pt").input_features
        with torch.no_grad():
            out = model.generate(
                feats, language="en", max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1
            )
        return out[0].tolist()

    return run


def hf_t5(folder: Path, ids: list[int], new: int) -> Callable[[], list[int]]:
    import torch
    import transformers

    model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    x = torch.tensor([ids])

    def run() -> list[int]:
        with torch.no_grad():
            out = model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1)
        return out[0].tolist()

    return run


def torchport_package(folder: Path, out: Path, task: str) -> tuple[Any, str]:
    """Export ``folder`` for generation; ``(generator, "")`` or ``(None, why not)``."""
    from torchport.exporters import export_model
    from torchport.runtimes import Session
    from torchport.runtimes._errors import TorchportError
    from torchport.runtimes._generate import Generator

    try:
        export_model(str(folder), out, task=task, overwrite=True, quiet=True)
        return Generator(Session.from_package(out)), ""
    except TorchportError as e:
        return None, str(e).splitlines()[0]


def torchport_whisper(gen: Any, package: Path, audio: np.ndarray, new: int) -> Callable[[], list[int]]:
    from torchport.runtimes._audio import AudioFeatures
    from torchport.runtimes._audio_prompt import WhisperPrompt

    extra = gen.session.manifest.extra
    features = AudioFeatures.from_config(extra.get("audio") or {})
    prompt = WhisperPrompt.from_settings(extra["generation"].get("whisper") or extra["generation"])

    def run() -> list[int]:
        feats = features.extract([audio])
        ids = prompt.prompt(language="en")
        return gen.generate(
            None, sources=[{"input_features": feats[0]}], forced=ids[1:], max_new_tokens=new, ignore_eos=True
        ).tokens[0]

    return run


def torchport_t5(gen: Any, ids: list[int], new: int) -> Callable[[], list[int]]:
    def run() -> list[int]:
        return gen.generate([ids], max_new_tokens=new, ignore_eos=True).tokens[0]

    return run


def server_streams(
    package: Path, body: dict[str, Any], levels: tuple[int, ...], threads: int
) -> dict[int, tuple[float, float]]:
    """Per number of concurrent ``/generate_stream`` clients: (median TTFT ms, aggregate tokens/s), on a
    server on a thread of this process (the clients share its interpreter lock)."""
    import http.client
    import json
    import shutil
    import threading

    from torchport.runtimes.server import InferenceServer, ServerConfig

    repo = package.parent / f"repo-{package.name}"
    repo.mkdir()
    shutil.copytree(package, repo / "m")
    raw = json.dumps(body)

    def one(port: int, out: list[tuple[float, int]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start = time.perf_counter()
        conn.request("POST", "/v2/models/m/generate_stream", body=raw)
        resp = conn.getresponse()
        first, buf = None, b""
        while chunk := resp.read1(65536):
            if first is None and b"data: " in chunk:
                first = time.perf_counter() - start
            buf += chunk
        events = [json.loads(e[6:]) for e in buf.decode().split("\n\n") if e.startswith("data: ")]
        if "usage" not in events[-1]:
            raise RuntimeError(f"the server answered {events[-1]}")
        out.append((first or 0.0, events[-1]["usage"]["completion_tokens"]))
        conn.close()

    config = ServerConfig(port=0, access_log=False, warmup=1, intra_op_threads=threads)
    server = InferenceServer(repo, config).start_in_thread()
    try:
        results = {}
        for c in (1, *levels):  # the first round warms up
            out: list[tuple[float, int]] = []
            start = time.perf_counter()
            workers = [threading.Thread(target=one, args=(server.port, out)) for _ in range(c)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            if len(out) != c:
                raise RuntimeError("a stream failed (see the server log)")
            results[c] = (
                float(np.median([f for f, _ in out])) * 1e3,
                sum(n for _, n in out) / (time.perf_counter() - start),
            )
        return results
    finally:
        server.stop()


def optimum_python() -> Path | None:
    """The Python that has Optimum's ONNX Runtime models: this one, or ``.venv-optimum``'s
    (``bash scripts/bench_peers.sh optimum``); ``TORCHPORT_BENCH_OPTIMUM_PYTHON`` overrides."""
    env = os.environ.get("TORCHPORT_BENCH_OPTIMUM_PYTHON")
    if env:
        return Path(env)
    try:
        import optimum.onnxruntime  # noqa: F401

        return Path(sys.executable)
    except ImportError:
        python = REPO_ROOT / ".venv-optimum" / "bin" / "python"
        return python if python.exists() else None


def optimum_runner(
    folder: Path, kind: str, args: argparse.Namespace
) -> tuple[Callable[[], list[int]] | None, str]:
    """Optimum's runner: :func:`optimum_worker` in Optimum's own Python (its transformers/optimum pins
    clash with ours), kept running; each call asks it for one ``generate`` and returns its tokens.
    ``(run, version note)`` or ``(None, why it is skipped)``."""
    import atexit
    import json
    import subprocess

    python = optimum_python()
    if python is None:
        return None, "skipped (no Optimum here nor in .venv-optimum: bash scripts/bench_peers.sh optimum)"
    cmd = [str(python), str(Path(__file__).resolve()), "--optimum-worker", kind, str(folder),
           "--new-tokens", str(args.new_tokens), "--source-tokens", str(args.source_tokens),
           "--seconds", str(args.seconds), "--threads", str(args.threads)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""}
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    atexit.register(proc.kill)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def reply() -> dict[str, Any]:
        for line in stdout:
            if line.startswith("{"):
                return dict(json.loads(line))
        err = proc.stderr.read() if proc.stderr is not None else ""
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"Optimum failed: {tail[:100]}")

    try:
        ready = reply()
    except RuntimeError as e:
        return None, f"skipped ({e})"

    def run() -> list[int]:
        stdin.write("run\n")
        stdin.flush()
        return list(reply()["tokens"])

    return run, f"optimum {ready['optimum']}"


def optimum_worker(kind: str, folder: Path, args: argparse.Namespace) -> int:
    """Runs in Optimum's Python: export ``folder`` with Optimum (ORTModelForSpeechSeq2Seq /
    ORTModelForSeq2SeqLM, its default CPU settings, ``threads`` intra-op threads), print a JSON
    line when ready, then run ``generate`` once per ``run`` line on stdin (timed by the caller, as
    the Hugging Face row: pre-processing included for Whisper) and print its new tokens."""
    import importlib.metadata
    import json

    import onnxruntime as ort
    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForSeq2SeqLM, ORTModelForSpeechSeq2Seq

    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    new = args.new_tokens
    if kind == "speech":
        model = ORTModelForSpeechSeq2Seq.from_pretrained(folder, export=True, session_options=options)
        extractor = transformers.WhisperFeatureExtractor.from_pretrained(folder)
        audio = test_audio(args.seconds)

        def run() -> list[int]:
            feats = extractor(audio, sampling_rate=RATE, return_tensors="pt").input_features
            out = model.generate(
                feats, language="en", max_new_tokens=new, min_new_tokens=new, do_sample=False
            )
            return [int(t) for t in out[0].tolist()]  # the new tokens only (Whisper's generate)
    else:
        model = ORTModelForSeq2SeqLM.from_pretrained(folder, export=True, session_options=options)
        ids = [int(i) for i in np.random.default_rng(0).integers(2, 32000, args.source_tokens)]
        x = torch.tensor([ids])

        def run() -> list[int]:
            out = model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1)
            return [int(t) for t in out[0].tolist()[1:]]  # without the decoder start token

    print(json.dumps({"optimum": importlib.metadata.version("optimum")}), flush=True)
    with torch.no_grad():
        for line in sys.stdin:
            if line.strip() == "run":
                print(json.dumps({"tokens": run()}), flush=True)
    return 0


def genai_whisper(
    folder: Path, work: Path, audio: np.ndarray, new: int, threads: int
) -> tuple[Callable[[], list[int]] | None, str]:
    """onnxruntime-genai's Whisper: its model builder's encoder/decoder from ``folder`` (fp32, CPU) and
    its own audio processor (WAV in: decode + log-mel included, as torchport's row includes its
    log-mel); ``(run, "")`` or ``(None, why not)``."""
    import json
    import subprocess

    try:
        import onnxruntime_genai as og
    except ImportError:
        return None, "skipped (onnxruntime-genai not installed: pip install -e '.[bench]')"
    out = work / "genai-whisper"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(out),
           "-p", "fp32", "-e", "cpu", "-c", str(work / "genai-cache")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"skipped (genai's model builder failed on Whisper: {tail[:90]})"
    config_file = out / "genai_config.json"
    config = json.loads(config_file.read_text())
    for part in ("encoder", "decoder"):
        config["model"][part]["session_options"].update(intra_op_num_threads=threads, inter_op_num_threads=1)
    config_file.write_text(json.dumps(config, indent=2))
    wav = work / "genai-audio.wav"
    wav.write_bytes(_wav16(audio))
    model = og.Model(str(out))
    processor = model.create_multimodal_processor()
    # the special tokens of the benchmark's word tokenizer: start, <|en|>, transcribe, no timestamps
    prompt = "<|s50258|><|s50259|><|s50359|><|s50363|>"

    def run() -> list[int]:
        inputs = processor(prompt, audios=og.Audios.open(str(wav)))
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=4 + new, min_length=4 + new, batch_size=1)
        generator = og.Generator(model, params)
        generator.set_inputs(inputs)
        while not generator.is_done():
            generator.generate_next_token()
        return [int(t) for t in generator.get_sequence(0)][4:]

    return run, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (for the test)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--source-tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--no-server", action="store_true", help="skip the /generate_stream rows")
    parser.add_argument("--optimum-worker", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.optimum_worker:
        return optimum_worker(args.optimum_worker[0], Path(args.optimum_worker[1]), args)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    whisper_shape, t5_shape = SHAPES["tiny" if args.tiny else "real"]
    audio = test_audio(args.seconds)
    ids = [int(i) for i in np.random.default_rng(0).integers(2, 32000, args.source_tokens)]
    rows: list[tuple[str, str, float | None, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_whisper(work / "whisper", whisper_shape)
        build_t5(work / "t5", t5_shape)

        from transformers import WhisperFeatureExtractor

        from torchport.runtimes._audio import AudioFeatures

        hf_fe = WhisperFeatureExtractor()
        ours_fe = AudioFeatures()
        t_hf, ref = best(
            lambda: hf_fe(audio, sampling_rate=RATE, return_tensors="np").input_features, args.repeats
        )
        t_ours, got = best(lambda: ours_fe.extract([audio]), args.repeats)
        err = float(np.abs(got - ref).max())
        rows.append(("whisper features", "transformers WhisperFeatureExtractor", t_hf, ""))
        rows.append(("whisper features", "torchport numpy log-mel", t_ours, f"max err {err:.1e}"))

        # per model, every runner is set up first, then timed in interleaved rounds
        for model, folder, task in (
            ("whisper", work / "whisper", "automatic-speech-recognition"),
            ("t5", work / "t5", "text2text-generation"),
        ):
            runners: dict[str, Callable[[], Any]] = {}
            skipped: dict[str, str] = {}
            notes: dict[str, str] = {}
            speech = model == "whisper"
            runners["Hugging Face eager"] = (
                hf_whisper(folder, audio, args.new_tokens) if speech else hf_t5(folder, ids, args.new_tokens)
            )
            gen, why = torchport_package(folder, work / f"pkg-{model}", task)
            if gen is None:
                skipped["torchport"] = f"skipped ({why})"
            else:
                runners["torchport"] = (
                    torchport_whisper(gen, work / f"pkg-{model}", audio, args.new_tokens)
                    if speech
                    else torchport_t5(gen, ids, args.new_tokens)
                )
            if not args.no_peers:
                name = "Optimum ORTModelForSpeechSeq2Seq" if speech else "Optimum ORTModelForSeq2SeqLM"
                run, note = optimum_runner(folder, "speech" if speech else "seq2seq", args)
                if run is None:
                    skipped[name] = note
                else:
                    runners[name], notes[name] = run, note
                if speech:
                    run, why = genai_whisper(folder, work, audio, args.new_tokens, args.threads)
                    if run is None:
                        skipped["onnxruntime-genai"] = why
                    else:
                        runners["onnxruntime-genai"] = run
            for who, (t, out) in interleaved(runners, args.repeats).items():
                if t is None:
                    rows.append((model, who, None, f"skipped ({out})"))
                    continue
                count = f"{len(out)} ids" if who == "Hugging Face eager" else f"{len(out)} new tokens"
                rows.append((model, who, t, ", ".join([count, *([notes[who]] if who in notes else [])])))
            rows += [(model, who, None, why) for who, why in skipped.items()]

        streams: list[tuple[str, int, float, float]] = []
        if not args.no_server:
            import base64

            wav = _wav16(audio)
            speech = {
                "audio": base64.b64encode(wav).decode(),
                "language": "en",
                "max_tokens": args.new_tokens,
            }
            text = {"text_input": " ".join(f"w{i}" for i in ids), "max_tokens": args.new_tokens}
            for model, pkg, body in (
                ("whisper", work / "pkg-whisper", speech),
                ("t5", work / "pkg-t5", text),
            ):
                if not (pkg / "torchport.json").is_file():
                    continue
                try:
                    got = server_streams(pkg, {**body, "ignore_eos": True}, (1, 8), args.threads)
                except Exception as e:  # report, do not hide
                    print(f"server {model}: skipped ({type(e).__name__}: {str(e)[:100]})")
                    continue
                streams += [(model, c, ttft, tps) for c, (ttft, tps) in sorted(got.items())]

    base = {
        m: t for m, who, t, _ in rows if who in ("Hugging Face eager", "transformers WhisperFeatureExtractor")
    }
    print(f"threads {args.threads}, {args.new_tokens} new tokens, whisper on {args.seconds:g} s of audio, "
          f"t5 on {args.source_tokens} tokens; shapes {'tiny' if args.tiny else 'whisper-tiny / t5-small'}")  # fmt: skip
    print(f"runners timed in {args.repeats} interleaved rounds (median), after one warm-up round")
    print(f"{'model':<18} {'runner':<38} {'seconds':>8} {'RTF':>7} {'tok/s':>8} {'vs HF':>7}  note")
    for model, who, t, note in rows:
        if t is None:
            print(f"{model:<18} {who:<38} {'-':>8} {'-':>7} {'-':>8} {'-':>7}  {note}")
            continue
        rtf = f"{t / args.seconds:.3f}" if model != "t5" else "-"
        tps = f"{args.new_tokens / t:.1f}" if model in ("whisper", "t5") else "-"
        ratio = f"{base[model] / t:.2f}x" if model in base else "-"
        print(f"{model:<18} {who:<38} {t:8.3f} {rtf:>7} {tps:>8} {ratio:>7}  {note}")
    if streams:
        print(f"\nserver /generate_stream (in-process thread server), {args.new_tokens} tokens per stream")
        print(f"{'model':<10} {'streams':>7} {'TTFT ms (median)':>17} {'tokens/s (all)':>15}")
        for model, c, ttft, tps in streams:
            print(f"{model:<10} {c:>7} {ttft:>17.1f} {tps:>15.1f}")
    return 0


def _wav16(samples: np.ndarray) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
