"""Benchmark of the built-in LLM engine against plain transformers, on a random ~56M Llama (32k vocab).

    .venv/bin/python benchmarks/llm.py [--dtype bfloat16] [--threads N] [--reps 3]

(a) time to first token of a request whose 2,048-token prefix is in the prefix cache, against
    the same request cold (goal: >= 10x faster);
(b) output tokens/s of 8 concurrent requests through the engine (continuous batching), against
    transformers `generate` called one request at a time (goal: >= 4x).

The model and a word-level tokenizer are built on the fly in a temporary directory (no
download). transformers runs in the same process, dtype and thread count, so the ratios compare
like with like; its static batch of 8 and its own prefix-KV reuse are printed for orientation.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The instance's default (modelport.llm.__main__), for both engines: set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SRC = Path(__file__).resolve().parents[1] / "src"
for path in (SRC, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

MODEL = {
    "hidden_size": 512,
    "num_layers": 8,
    "num_heads": 8,
    "num_kv_heads": 4,
    "intermediate_size": 1408,
    "max_position_embeddings": 4096,
    "tokenizer": "wordlevel",
    "vocab_size": 32000,
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each TTFT measurement (median)")
    ap.add_argument("--prefix-len", type=int, default=2048)
    ap.add_argument("--suffix-len", type=int, default=32)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--skip-static-batch", action="store_true", help="skip transformers' static batch row")
    ap.add_argument("--skip-http", action="store_true", help="skip (b) through a real instance over HTTP")
    return ap.parse_args()


def build_model(root: Path) -> Path:
    from modelport.llm.testing import build_checkpoint

    return build_checkpoint(root / "bench-llama", **MODEL)  # type: ignore[arg-type]


class Prompts:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def __call__(self, n: int) -> list[int]:
        return [self.rng.randrange(10, MODEL["vocab_size"]) for _ in range(n)]  # type: ignore[call-overload]


def engine_ttft(engine: Any, prompt: list[int]) -> float:
    from modelport.llm.request import SamplingParams

    rid = f"ttft-{time.monotonic_ns()}"
    started = time.perf_counter()
    engine.add_request(rid, prompt, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished:
        engine.step()
    return time.perf_counter() - started


def engine_throughput(engine: Any, prompts: list[list[int]], output_len: int) -> float:
    from modelport.llm.request import SamplingParams

    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"tput-{i}", prompt, params)
    produced = 0
    while engine.has_unfinished:
        produced += sum(len(o.new_token_ids) for o in engine.step())
    return produced / (time.perf_counter() - started)


def hf_ttft_cold(model: Any, prompt: list[int]) -> float:
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        model(torch.tensor([prompt])).logits[0, -1].argmax()
    return time.perf_counter() - started


def hf_ttft_prefix_reused(model: Any, prefix: list[int], suffix: list[int]) -> float:
    """transformers with the prefix's KV computed beforehand (copying it is part of the cost)."""
    import torch

    with torch.inference_mode():
        cache = model(torch.tensor([prefix]), use_cache=True).past_key_values
        started = time.perf_counter()
        kv = copy.deepcopy(cache)
        model(torch.tensor([suffix]), past_key_values=kv, use_cache=True).logits[0, -1].argmax()
    return time.perf_counter() - started


def hf_generate_tps(model: Any, prompts: list[list[int]], output_len: int, batch: bool) -> float:
    import torch

    kwargs = {"max_new_tokens": output_len, "min_new_tokens": output_len, "do_sample": False, "pad_token_id": 0}
    started = time.perf_counter()
    produced = 0
    with torch.inference_mode():
        groups = [prompts] if batch else [[p] for p in prompts]
        for group in groups:
            out = model.generate(torch.tensor(group), **kwargs)
            produced += (out.shape[1] - len(group[0])) * len(group)
    return produced / (time.perf_counter() - started)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    args = parse_args()
    import torch
    import transformers

    from modelport.llm.config import EngineConfig
    from modelport.llm.engine import LLMEngine

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="modelport-bench-") as tmp:
        checkpoint = build_model(Path(tmp))
        config = EngineConfig(
            checkpoint=checkpoint,
            served_model_name="bench",
            dtype=args.dtype,
            threads=args.threads,
            kv_cache_mb=256,
            max_num_seqs=max(args.requests, 8),
            max_num_batched_tokens=512,
        )
        engine = LLMEngine(config)
        threads = torch.get_num_threads()
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=getattr(torch, args.dtype))
        hf.eval()
        params = sum(p.numel() for p in hf.parameters()) / 1e6
        prompts = Prompts()

        # (a) TTFT: the same request, cold vs. with its 2,048-token prefix cached.
        engine_ttft(engine, prompts(256))  # settle allocator and caches
        cold, warm, hf_cold, hf_warm = [], [], [], []
        for _ in range(args.reps):
            prefix, suffix = prompts(args.prefix_len), prompts(args.suffix_len)
            cold.append(engine_ttft(engine, prefix + suffix))
            engine.reset_prefix_cache()
            engine_ttft(engine, prefix + prompts(args.suffix_len))  # another request puts the prefix in cache
            warm.append(engine_ttft(engine, prefix + suffix))
            hf_cold.append(hf_ttft_cold(hf, prefix + suffix))
            hf_warm.append(hf_ttft_prefix_reused(hf, prefix, suffix))
            engine.reset_prefix_cache()

        # (b) throughput at N concurrent requests vs. one at a time.
        batch = [prompts(args.prompt_len) for _ in range(args.requests)]
        ours_tps = engine_throughput(engine, batch, args.output_len)
        hf_seq_tps = hf_generate_tps(hf, batch, args.output_len, batch=False)
        hf_batch_tps = None if args.skip_static_batch else hf_generate_tps(hf, batch, args.output_len, batch=True)
        snapshot = engine.snapshot()
        http_tps = None
        if not args.skip_http:
            del engine  # free its KV pool before the instance allocates its own
            from _llm_http import http_throughput

            http_tps = http_throughput(checkpoint, args.dtype, threads, batch, args.output_len)

    c, w = median(cold), median(warm)
    n, plen, olen = args.requests, args.prompt_len, args.output_len
    print(
        f"\nmodel: random Llama {params:.1f}M params, vocab 32000, {args.dtype}, torch threads {threads}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    print(f"(a) prompt = {args.prefix_len}-token prefix + {args.suffix_len}-token suffix; median of {args.reps}")
    print(f"(b) {n} requests x {plen} prompt tokens -> {olen} output tokens each (greedy, no EOS)\n")
    rows = [
        ("(a) TTFT cold", f"{c:.3f} s", f"{median(hf_cold):.3f} s (forward)", ""),
        ("(a) TTFT, prefix cached", f"{w:.3f} s", f"{median(hf_warm):.3f} s (KV reused)", ""),
        ("(a) speed-up cached vs cold", f"{c / w:.1f}x", "", ">= 10x"),
        (f"(b) output tok/s, {n} concurrent", f"{ours_tps:.1f}", f"{hf_seq_tps:.1f} (one at a time)", ""),
    ]
    if http_tps is not None:
        rows.append((f"(b) same, {n} HTTP streams", f"{http_tps:.1f}", "", ""))
    if hf_batch_tps is not None:
        rows.append(("(b) transformers static batch", "", f"{hf_batch_tps:.1f} (batch of {n})", ""))
    rows.append(("(b) speed-up vs one at a time", f"{ours_tps / hf_seq_tps:.1f}x", "", ">= 4x"))
    widths = [max(len(r[i]) for r in [*rows, ("measure", "modelport", "transformers", "goal")]) for i in range(4)]
    header = ("measure", "modelport", "transformers", "goal")
    print("| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |")
    print("|" + "|".join("-" * (w_ + 2) for w_ in widths) + "|")
    for row in rows:
        print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
    print(
        f"\nengine: {snapshot['steps']} steps, prefix hit rate {snapshot['prefix_cache_hit_rate']:.2f}, "
        f"{snapshot['num_preemptions']} preemptions, block size {snapshot['block_size']}"
    )


if __name__ == "__main__":
    main()
