"""Greedy generation speed and quality: Hugging Face eager ``generate`` vs torchport (fp32, int8, int4) vs
onnxruntime-genai (fp32, int8, int4 from its own model builder on the same weights), plus the server's
streaming time to first token and tokens/s at 1 and 8 concurrent streams.

One process, 2 threads everywhere, a Llama-style model (8 layers, hidden 512, vocab 32000, ~56M
parameters): by default the test bed's trained LM (``torchport.exporters.examples.testbed.build_lm
("bench")``, trained on this machine from the standard library's sources, cached), with
``--random-model`` the same shape with random weights. Prompt 32 tokens (a held-out line of the
test bed), 128 new tokens. Ratios are against Hugging Face eager fp32 measured in the same run;
greedy-token agreement is against its tokens; perplexity is on the test bed's held-out text.
The torchport rows use ``Session``'s defaults (idle pool threads spin briefly, as onnxruntime-genai's
do); the "no spinning" row is how ``torchport serve`` runs sessions, leaving cores to its other threads.

    python benchmarks/generate.py [--repeats 5] [--new-tokens 128] [--no-genai] [--no-server] [--random-model]
                                  [--step-rounds 5]

``--step-rounds`` also times single decode steps, torchport's and genai's alternating token by token, so
both see the same moment's load (the whole-run rounds above pick each runner's best round, which on a
shared, loaded machine may come from different moments).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from torchport.runtimes._table import format_table  # noqa: E402

THREADS = 2


def build_model(folder: Path) -> int:
    """Save the ~50M Llama-style model (and a byte-level tokenizer) to ``folder``; return its parameter count."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = T.LlamaForCausalLM(config).eval()
    model.save_pretrained(str(folder))
    vocab = {f"<{i}>": i for i in range(32000)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<1>", "eos_token": "<2>"})
    )
    return sum(p.numel() for p in model.parameters())


def interleaved(
    runners: list[tuple[str, Callable[..., list[int]]]], repeats: int
) -> dict[str, tuple[float, list[int]]]:
    """Warm each runner up, then time them in turns (``repeats`` rounds, so load spikes on this shared
    machine hit all of them alike); each gets its fastest round and its tokens."""
    tokens = {name: fn() for name, fn in runners}
    best = {name: float("inf") for name, _ in runners}
    for _ in range(repeats):
        for name, fn in runners:
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], tokens[name]) for name, _ in runners}


def interleaved_steps(
    package: Path, genai_dirs: dict[str, Path], prompt: list[int], new: int, rounds: int
) -> list[tuple[str, float, float, float, float]]:
    """Decode-step times, torchport's ``DecodeBatch.step`` and onnxruntime-genai's ``generate_next_token``
    alternating token by token (each pair runs under the same moment's load, which whole-run rounds on a
    shared machine do not give): per precision (variant, torchport median ms, genai median ms, speed
    ratio of the medians, ratio of the 10th percentiles)."""
    import onnxruntime_genai as og

    from torchport.runtimes import SamplingParams, Session
    from torchport.runtimes._generate import DecodeBatch, GenRequest

    rows = []
    for name, out in genai_dirs.items():
        variant = name.split()[-1]
        sess = Session.from_package(package, variant=variant, intra_op_threads=THREADS, inter_op_threads=1)
        model = og.Model(str(out))
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(rounds):
            batch = DecodeBatch(sess)
            batch.add([GenRequest(prompt, SamplingParams(max_new_tokens=new, ignore_eos=True))])
            params = og.GeneratorParams(model)
            params.set_search_options(
                do_sample=False, max_length=len(prompt) + new, min_length=len(prompt) + new
            )
            gen = og.Generator(model, params)
            gen.append_tokens(np.asarray([prompt], np.int32))
            gen.generate_next_token()  # genai's first token (torchport's came with add)
            for _ in range(new - 2):
                start = time.perf_counter()
                batch.step()
                ours.append(time.perf_counter() - start)
                start = time.perf_counter()
                gen.generate_next_token()
                theirs.append(time.perf_counter() - start)
        a, b = np.asarray(ours) * 1e3, np.asarray(theirs) * 1e3
        rows.append(
            (
                variant,
                float(np.median(a)),
                float(np.median(b)),
                float(np.median(b) / np.median(a)),
                float(np.percentile(b, 10) / np.percentile(a, 10)),
            )
        )
    return rows


def hf_eager(folder: Path, prompt: list[int], new: int, device: str = "cpu") -> Callable[..., list[int]]:
    """Hugging Face eager greedy ``generate`` of ``new`` tokens (on ``device``; on the CPU with THREADS)."""
    import transformers as T

    if device == "cpu":
        torch.set_num_threads(THREADS)
    model = T.AutoModelForCausalLM.from_pretrained(str(folder)).eval().to(device)

    def run(other: list[int] | None = None) -> list[int]:
        ids = torch.tensor([other or prompt], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=0,
            )
        return out[0, ids.shape[1] :].tolist()

    return run


def agreement(tokens: list[int], reference: list[int]) -> float:
    """Share of ``reference``'s positions where ``tokens`` has the same token."""
    return sum(a == b for a, b in zip(tokens, reference, strict=False)) / len(reference)


def agreement_over_prompts(
    runners: dict[str, Callable[..., list[int]]],
    count: int,
    length: int,
    prompts: list[list[int]] | None = None,
) -> dict[str, float]:
    """Each runner's free-running greedy agreement with Hugging Face's tokens, averaged over ``count``
    other prompts of ``length`` tokens (``prompts``: the test bed's held-out ones; else random ids;
    one prompt's figure hangs on where its first near-tie falls)."""
    rng = np.random.default_rng(1)
    if prompts is None:
        prompts = [[1] + [int(x) for x in rng.integers(3, 32000, length - 1)] for _ in range(count)]
    prompts = prompts[:count]
    if not prompts:
        return {}
    references = [runners["Hugging Face eager fp32"](p) for p in prompts]
    return {
        name: float(np.mean([agreement(fn(p), ref) for p, ref in zip(prompts, references, strict=True)]))
        for name, fn in runners.items()
    }


def torchport_run(
    package: Path, variant: str, prompt: list[int], new: int, spinning: bool = True
) -> Callable[..., list[int]]:
    """``spinning=True`` is ``Session``'s default; ``torchport serve`` turns it off (spinning pool threads
    lose badly on a machine with more busy threads than cores)."""
    from torchport.runtimes import Session

    sess = Session.from_package(
        package, variant=variant, intra_op_threads=THREADS, inter_op_threads=1, spinning=spinning
    )
    return lambda other=None: sess.generate([other or prompt], max_new_tokens=new, ignore_eos=True).tokens[0]


def forced_logits(package: Path, variant: str, prompt: list[int], reference: list[int]) -> np.ndarray:
    """``variant``'s logits at each of the reference's steps when it sees the reference's own prefix
    (one prompt run over ``prompt + reference``)."""
    from torchport.runtimes import Session

    sess = Session.from_package(package, variant=variant, intra_op_threads=THREADS)
    ids = np.asarray([prompt + reference[:-1]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "position_ids" in sess.input_names:
        feeds["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
    for spec in sess.input_specs:
        if spec.name.startswith("past_key_values."):
            feeds[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), np.float32)
    return sess.run(feeds, validate=False)["logits"][0, len(prompt) - 1 :]


def teacher_forced_top1(package: Path, variant: str, prompt: list[int], reference: list[int]) -> float:
    """Share of steps where ``variant``'s greedy pick equals the reference token from the same prefix
    (no cascading after a near-tie flips one token)."""
    logits = forced_logits(package, variant, prompt, reference)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(reference)))


def logit_gaps(package: Path, prompt: list[int], reference: list[int]) -> tuple[float, float]:
    """Median and 5th percentile of fp32's top-1 minus top-2 logit along the reference tokens: how close
    the greedy choices are (random weights give near-ties that any int8 error flips)."""
    logits = np.sort(forced_logits(package, "fp32", prompt, reference), -1)
    gaps = logits[:, -1] - logits[:, -2]
    return float(np.median(gaps)), float(np.percentile(gaps, 5))


def eval_windows(folder: Path, text: str, seq: int = 128, count: int = 8) -> list[list[int]]:
    """``count`` windows of ``seq`` token ids from held-out ``text`` (the model folder's tokenizer)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
    step = max(seq, (len(ids) - seq) // max(1, count))
    return [ids[i : i + seq] for i in range(0, len(ids) - seq, step)][:count]


def perplexity(logits_of: Callable[[list[int]], np.ndarray], windows: list[list[int]]) -> float:
    """exp of the mean next-token negative log-likelihood over ``windows`` (``logits_of(ids)``:
    ``[len(ids), vocab]`` logits of a run over ``ids`` from an empty cache)."""
    total, count = 0.0, 0
    for ids in windows:
        logits = np.asarray(logits_of(ids), np.float64)[:-1]
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return float(np.exp(total / count))


def hf_logits(folder: Path) -> Callable[[list[int]], np.ndarray]:
    import transformers as T

    model = T.AutoModelForCausalLM.from_pretrained(str(folder)).eval()

    def run(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].numpy()

    return run


def torchport_logits(package: Path, variant: str) -> Callable[[list[int]], np.ndarray]:
    from torchport.runtimes import Session

    sess = Session.from_package(package, variant=variant, intra_op_threads=THREADS)

    def run(ids: list[int]) -> np.ndarray:
        arr = np.asarray([ids], np.int64)
        feeds = {"input_ids": arr, "attention_mask": np.ones_like(arr)}
        if "position_ids" in sess.input_names:
            feeds["position_ids"] = np.arange(arr.shape[1], dtype=np.int64)[None]
        for spec in sess.input_specs:
            if spec.name.startswith("past_key_values."):
                feeds[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), np.float32)
        return sess.run(feeds, validate=False)["logits"][0]

    return run


def genai_logits(out: Path) -> Callable[[list[int]], np.ndarray]:
    """onnxruntime-genai's logits over a prompt (its generator's prompt step)."""
    import onnxruntime_genai as og

    model = og.Model(str(out))

    def run(ids: list[int]) -> np.ndarray:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 1)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray([ids], np.int32))
        logits = np.asarray(gen.get_output("logits"))
        return logits.reshape(-1, logits.shape[-1])[-len(ids) :]

    return run


def genai_run(
    folder: Path, work: Path, prompt: list[int], new: int, precision: str = "fp32"
) -> Callable[..., list[int]] | str:
    """onnxruntime-genai's model builder (``-p precision -e cpu``, its defaults otherwise) on the same
    weights, and its generator, greedy; a string says why it could not run."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return "onnxruntime-genai not installed (pip install onnxruntime-genai)"
    out = work / f"genai-{precision}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(folder),
            "-o",
            str(out),
            "-p",
            precision,
            "-e",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        return "builder failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
    cfg = json.loads((out / "genai_config.json").read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = THREADS
    cfg["model"]["decoder"]["session_options"]["inter_op_num_threads"] = 1
    (out / "genai_config.json").write_text(json.dumps(cfg))
    model = og.Model(str(out))

    def run(other: list[int] | None = None) -> list[int]:
        ids = other or prompt
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + new, min_length=len(ids) + new)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray([ids], np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        return [int(t) for t in gen.get_sequence(0)[len(ids) :]]

    return run


@contextlib.contextmanager
def serve_process(repo: Path) -> Iterator[int]:
    """``torchport serve REPO`` in its own process (as users run it: the clients' threads do not share
    its interpreter lock); yields its port once ready."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torchport.cli", "serve", str(repo), "--port", str(port)]
    cmd += ["--intra-op-threads", str(THREADS), "--no-access-log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"torchport serve exited: {proc.stderr.read().decode()[-500:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("torchport serve did not get ready in 120 s")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def serve_thread(repo: Path) -> Iterator[int]:
    """The server on a thread of this process (the clients' threads share its interpreter lock)."""
    from torchport.runtimes.server import InferenceServer, ServerConfig

    server = InferenceServer(
        repo, ServerConfig(port=0, access_log=False, warmup=1, intra_op_threads=THREADS)
    ).start_in_thread()
    try:
        yield server.port
    finally:
        server.stop()


def server_streams(
    package: Path,
    prompt_text: str,
    new: int,
    levels: tuple[int, ...],
    rounds: int,
    in_process: bool = False,
) -> dict[int, tuple[float, float]]:
    """For each number of concurrent streams: (median time to first token in ms, aggregate tokens/s),
    from the best of ``rounds`` interleaved rounds on one server (``torchport serve`` in its own
    process, or with ``in_process`` on a thread of this one)."""
    repo = package.parent / "repo"
    if not repo.exists():
        repo.mkdir()
        shutil.copytree(package, repo / "llama")
    body = json.dumps({"text_input": prompt_text, "max_tokens": new, "ignore_eos": True})

    def one(port: int, out: list[tuple[float, int]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        start = time.perf_counter()
        conn.request("POST", "/v2/models/llama/generate_stream", body=body)
        resp = conn.getresponse()
        first = None
        buf = b""
        while chunk := resp.read1(65536):
            if first is None and b"data: " in chunk:
                first = time.perf_counter() - start
            buf += chunk
        events = [json.loads(e[6:]) for e in buf.decode().split("\n\n") if e.startswith("data: ")]
        out.append((first or 0.0, events[-1]["usage"]["completion_tokens"]))
        conn.close()

    def measure(port: int, concurrency: int) -> tuple[float, float]:
        out: list[tuple[float, int]] = []
        start = time.perf_counter()
        threads = [threading.Thread(target=one, args=(port, out)) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        return float(np.median([f for f, _ in out])) * 1e3, sum(n for _, n in out) / wall

    with (serve_thread if in_process else serve_process)(repo) as port:
        measure(port, 1)  # warm-up
        best: dict[int, tuple[float, float]] = {}
        for _ in range(rounds):
            for c in levels:
                got = measure(port, c)
                if c not in best or got[1] > best[c][1]:
                    best[c] = got
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--no-genai", action="store_true")
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--level", default="all", help="torchport --level for both variants")
    parser.add_argument(
        "--step-rounds",
        type=int,
        default=5,
        help="rounds of the token-by-token alternating decode-step comparison with genai (0: skip it)",
    )
    parser.add_argument(
        "--random-model", action="store_true", help="random weights instead of the test bed's trained LM"
    )
    parser.add_argument(
        "--testbed-size",
        default="bench",
        choices=("bench", "test"),
        help="the test bed LM: bench (the 56M shape, default) or test (a few M parameters, quick)",
    )
    parser.add_argument(
        "--agreement-prompts",
        type=int,
        default=16,
        help="prompts the greedy agreement is also averaged over: the test bed's held-out ones (16, "
        "distinct, the timed prompt among them), or random ids for --random-model",
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    from torchport.exporters import export_model, optimize_package

    work = Path(tempfile.mkdtemp(prefix="tp-generate-"))
    try:
        held_prompts: list[list[int]] | None = None
        eval_text = None
        trained = None
        if not args.random_model:
            try:
                from torchport.exporters.examples.testbed import build_lm

                trained = build_lm(args.testbed_size, quiet=False)
            except ImportError as e:
                print(f"test bed not available ({e}); using the random-weight model")
        if trained is not None:
            from tokenizers import Tokenizer

            folder = Path(trained.path)
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            held = [tok.encode(p).ids for p in trained.prompts]
            held = [ids[: args.prompt_tokens] for ids in held if len(ids) >= 4]
            prompt, held_prompts = held[0], held
            eval_text = Path(trained.eval_data).read_text(encoding="utf-8")
            n_params = int(trained.metrics.get("params", 0))
            source = (
                f"the test bed's trained LM (held-out perplexity {trained.metrics.get('perplexity', 0):.1f})"
            )
        else:
            folder = work / "llama-50m"
            n_params = build_model(folder)
            prompt = [1] + [
                int(x) for x in np.random.default_rng(0).integers(3, 32000, args.prompt_tokens - 1)
            ]
            source = "random weights"
        print(
            f"model: Llama-style, {n_params / 1e6:.1f}M parameters, {source}; prompt {len(prompt)}, "
            f"new {args.new_tokens}, {THREADS} threads, best of {args.repeats} interleaved rounds"
        )
        start = time.perf_counter()
        package = work / "pkg" / "llama"
        export_model(str(folder), package, level=args.level, int8="dynamic", quiet=True)
        optimize_package(package, level="none", int4=True)
        print(
            f"torchport export (--level {args.level} --int8 dynamic, validated) + optimize --int4: "
            f"{time.perf_counter() - start:.1f}s"
        )

        runners = [("Hugging Face eager fp32", hf_eager(folder, prompt, args.new_tokens))]
        for variant in ("fp32", "int8", "int4"):
            runners.append((f"torchport {variant}", torchport_run(package, variant, prompt, args.new_tokens)))
        runners.append(
            (
                "torchport fp32, no spinning (as serve)",
                torchport_run(package, "fp32", prompt, args.new_tokens, spinning=False),
            )
        )
        genai_dirs: dict[str, Path] = {}
        for precision in () if args.no_genai else ("fp32", "int8", "int4"):
            got = genai_run(folder, work, prompt, args.new_tokens, precision)
            if isinstance(got, str):
                print(f"onnxruntime-genai {precision}: skipped ({got})")
            else:
                runners.append((f"onnxruntime-genai {precision}", got))
                genai_dirs[f"onnxruntime-genai {precision}"] = work / f"genai-{precision}"
        results = interleaved(runners, args.repeats)
        base_s, base_tokens = results["Hugging Face eager fp32"]
        gap_median, gap_p5 = logit_gaps(package, prompt, base_tokens)
        more = agreement_over_prompts(dict(runners), args.agreement_prompts, args.prompt_tokens, held_prompts)
        windows = eval_windows(folder, eval_text) if eval_text else []
        ppl: dict[str, float] = {}
        if windows:
            ppl["Hugging Face eager fp32"] = perplexity(hf_logits(folder), windows)
            for variant in ("fp32", "int8", "int4"):
                ppl[f"torchport {variant}"] = perplexity(torchport_logits(package, variant), windows)
            for name, out in genai_dirs.items():
                try:
                    ppl[name] = perplexity(genai_logits(out), windows)
                except Exception as e:  # noqa: BLE001 - reported, the row keeps its other figures
                    print(f"{name} perplexity: skipped ({type(e).__name__}: {e})")
        rows = [(name, s, toks) for name, (s, toks) in results.items()]
        base_ppl = ppl.get("Hugging Face eager fp32")
        table = []
        for name, s, toks in rows:
            agree = agreement(toks, base_tokens)
            first = next((i for i, (a, b) in enumerate(zip(toks, base_tokens)) if a != b), None)
            variant = name.split()[1].rstrip(",") if name.startswith("torchport") else None
            forced = teacher_forced_top1(package, variant, prompt, base_tokens) if variant else None
            p = ppl.get(name.split(",")[0])
            table.append(
                (
                    name,
                    round(args.new_tokens / s, 1),
                    round(s * 1e3 / args.new_tokens, 2),
                    round(base_s / s, 2),
                    f"{agree:.0%}",
                    "none" if first is None else first,
                    f"{more[name]:.0%}" if more else "-",
                    f"{forced:.0%}" if forced is not None else "-",
                    f"{p:.2f}" if p is not None else "-",
                    f"{(p / base_ppl - 1):+.1%}" if p is not None and base_ppl else "-",
                )
            )
        print()
        print(
            format_table(
                [
                    "runtime",
                    "tokens/s",
                    "ms/token",
                    "× HF eager",
                    "greedy agreement",
                    "first different token",
                    f"agreement, {min(len(held_prompts), args.agreement_prompts) if held_prompts else args.agreement_prompts} "
                    + ("held-out prompts" if held_prompts else "random prompts"),
                    "teacher-forced top-1",
                    "perplexity",
                    "vs fp32",
                ],
                table,
            )
        )
        speed = {name: args.new_tokens / s for name, s, _ in rows}
        for ours, theirs in (("fp32", "fp32"), ("int8", "int8"), ("int4", "int4")):
            if f"onnxruntime-genai {theirs}" in speed:
                ratio = speed[f"torchport {ours}"] / speed[f"onnxruntime-genai {theirs}"]
                print(f"torchport {ours} / onnxruntime-genai {theirs} decode speed: {ratio:.2f}x")
        print(
            "greedy agreement: share of the 128 tokens equal to HF's at the same position (after one flip the "
            "sequences part); on more prompts: the mean of that share over the test bed's distinct held-out "
            "prompts (the timed one among them), or random ids for the random model; teacher-forced top-1: each step from HF's own prefix; "
            "perplexity: on the test bed's held-out text (8 windows of 128 tokens). Top-1/top-2 logit gap along "
            f"HF's tokens: median {gap_median:.4f}, 5th percentile {gap_p5:.4f}."
        )

        if genai_dirs and args.step_rounds:
            steps = interleaved_steps(package, genai_dirs, prompt, args.new_tokens, args.step_rounds)
            print()
            print(
                format_table(
                    [
                        "precision",
                        "torchport ms/step (median)",
                        "genai ms/step (median)",
                        "torchport / genai speed (medians)",
                        "(10th percentiles)",
                    ],
                    [(v, round(a, 2), round(b, 2), f"{r:.2f}x", f"{r10:.2f}x") for v, a, b, r, r10 in steps],
                    title=f"decode steps token by token, alternating (torchport DecodeBatch.step vs genai "
                    f"generate_next_token; {args.step_rounds} x {args.new_tokens - 2} steps each)",
                )
            )

        if not args.no_server:
            text = " ".join(f"<{t}>" for t in prompt[1:])
            for title, in_process in (
                ("torchport serve process", False),
                ("server on a thread of the benchmark's process (clients share its interpreter lock)", True),
            ):
                best = server_streams(package, text, args.new_tokens, (1, 8), args.repeats, in_process)
                srows = [(c, round(ttft, 1), round(tps, 1)) for c, (ttft, tps) in best.items()]
                print()
                print(
                    format_table(
                        ["streams", "TTFT p50 ms", "aggregate tokens/s"],
                        srows,
                        title=f"/generate_stream (fp32, continuous batching): {title}",
                    )
                )
                print(f"8 streams / 1 stream aggregate tokens/s: {srows[1][2] / srows[0][2]:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
