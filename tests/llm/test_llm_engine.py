"""Engine correctness: greedy output equals transformers' `generate`, token for token (float32).

Alone, batched, with prefix-cache hits, with chunked prefill and after preemption, on Llama,
Qwen2 (q/k/v biases), Mistral (tied embeddings) and Llama 3 rope scaling. Also: seeded sampling
is reproducible, bfloat16 stays close to transformers' bfloat16, stop conditions, abort.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from llm_support import run_to_completion, tokens_of

from modelport.llm.request import FinishReason, SamplingParams

NEW_TOKENS = 24


def random_prompts(lengths: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(6, 300) for _ in range(n)] for n in lengths]


def greedy(max_tokens: int = NEW_TOKENS, **kw: Any) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "llama3"])
def test_greedy_alone_matches_transformers(arch: str, make_engine: Callable[..., Any], hf_greedy: Any) -> None:
    engine = make_engine(arch)
    for i, prompt in enumerate(random_prompts((1, 17, 90), seed=len(arch))):
        engine.add_request(f"r{i}", prompt, greedy())
        out = run_to_completion(engine)[f"r{i}"]
        assert tokens_of(out) == hf_greedy(arch, prompt, NEW_TOKENS), f"prompt of {len(prompt)} tokens"
        assert out[-1].finish_reason is FinishReason.LENGTH


def test_greedy_batched_with_requests_joining_midway(make_engine: Callable[..., Any], hf_greedy: Any) -> None:
    engine = make_engine(max_num_seqs=8)
    prompts = random_prompts((5, 33, 64, 12, 101, 2), seed=1)
    for i, prompt in enumerate(prompts[:4]):
        engine.add_request(f"r{i}", prompt, greedy())
    outputs: dict[str, list[Any]] = {}
    for _ in range(5):
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    for i, prompt in enumerate(prompts[4:], start=4):
        engine.add_request(f"r{i}", prompt, greedy())
    for rid, outs in run_to_completion(engine).items():
        outputs.setdefault(rid, []).extend(outs)
    for i, prompt in enumerate(prompts):
        assert tokens_of(outputs[f"r{i}"]) == hf_greedy("llama", prompt, NEW_TOKENS), f"request {i}"


def test_prefix_cache_hit_gives_the_same_output(make_engine: Callable[..., Any], hf_greedy: Any) -> None:
    engine = make_engine()
    shared = random_prompts((80,), seed=2)[0]
    first, second = [*shared, 7, 8, 9], [*shared, 10, 11]
    engine.add_request("a", first, greedy())
    a = run_to_completion(engine)["a"]
    assert a[-1].num_cached_tokens == 0
    engine.add_request("b", second, greedy())
    b = run_to_completion(engine)["b"]
    assert b[-1].num_cached_tokens == 80  # 5 full blocks of 16
    assert tokens_of(b) == hf_greedy("llama", second, NEW_TOKENS)
    # The very same prompt again: everything but the last block is reused.
    engine.add_request("c", first, greedy())
    c = run_to_completion(engine)["c"]
    assert c[-1].num_cached_tokens == 80 and tokens_of(c) == tokens_of(a)
    # A different cache_salt shares nothing.
    engine.add_request("d", first, greedy(), cache_salt="tenant-2")
    d = run_to_completion(engine)["d"]
    assert d[-1].num_cached_tokens == 0 and tokens_of(d) == tokens_of(a)


def test_chunked_prefill_gives_the_same_output(make_engine: Callable[..., Any], hf_greedy: Any) -> None:
    engine = make_engine(max_num_batched_tokens=16, max_num_seqs=4)
    prompts = random_prompts((75, 40, 9), seed=3)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, greedy())
    outputs = run_to_completion(engine)
    for i, prompt in enumerate(prompts):
        assert tokens_of(outputs[f"r{i}"]) == hf_greedy("llama", prompt, NEW_TOKENS)
    assert engine.stats.steps > 75 // 16


def test_preemption_gives_the_same_output(make_engine: Callable[..., Any], hf_greedy: Any) -> None:
    # 10 blocks of 16 tokens = 160 slots for four requests of 60-70 tokens each.
    engine = make_engine(num_kv_blocks=10, max_num_seqs=4, max_num_batched_tokens=64)
    prompts = random_prompts((40, 35, 30, 45), seed=4)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, greedy(max_tokens=30))
    outputs = run_to_completion(engine)
    assert engine.scheduler.stats.num_preemptions > 0
    for i, prompt in enumerate(prompts):
        assert tokens_of(outputs[f"r{i}"]) == hf_greedy("llama", prompt, 30), f"request {i}"
    assert engine.pool.num_used_blocks == 0
    engine.pool.check_invariants()


def test_seeded_sampling_is_reproducible(make_engine: Callable[..., Any]) -> None:
    engine = make_engine()
    prompt = random_prompts((20,), seed=5)[0]
    params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True)
    engine.add_request("a", prompt, params)
    a = tokens_of(run_to_completion(engine)["a"])
    engine.add_request("b", prompt, params)
    for i, other in enumerate(random_prompts((7, 50), seed=6)):
        engine.add_request(f"noise{i}", other, SamplingParams(max_tokens=20, temperature=1.0, ignore_eos=True))
    b = tokens_of(run_to_completion(engine)["b"])
    assert a == b
    engine.add_request("c", prompt, SamplingParams(max_tokens=20, temperature=1.0, seed=99, ignore_eos=True))
    assert tokens_of(run_to_completion(engine)["c"]) != a


def test_bfloat16_stays_close_to_transformers(make_engine: Callable[..., Any], checkpoints: Any) -> None:
    import torch
    import transformers

    engine = make_engine(dtype="bfloat16")
    prompt = random_prompts((30,), seed=7)[0]
    engine.add_request("a", prompt, greedy(max_tokens=1, logprobs=10))
    (out,) = run_to_completion(engine)["a"]
    ours = dict(out.new_logprobs[0].top)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoints["llama"]), dtype=torch.bfloat16)
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0, -1].float(), -1)
    theirs = dict(zip(ref.topk(10).indices.tolist(), ref.topk(10).values.tolist(), strict=True))
    common = set(ours) & set(theirs)
    assert len(common) >= 8
    assert all(abs(ours[t] - theirs[t]) < 0.05 for t in common)


def test_stop_conditions_and_abort(make_engine: Callable[..., Any], hf_greedy: Any) -> None:
    engine = make_engine()
    prompt = random_prompts((10,), seed=8)[0]
    reference = hf_greedy("llama", prompt, 12)
    stop_at = reference[5]
    engine.add_request("tok", prompt, greedy(max_tokens=12, stop_token_ids=(stop_at,)))
    out = run_to_completion(engine)["tok"]
    assert tokens_of(out) == reference[: reference.index(stop_at) + 1]
    assert out[-1].finish_reason is FinishReason.STOP and out[-1].stop_reason == stop_at

    engine.eos_token_ids = frozenset({stop_at})  # pretend the model's EOS is that token
    engine.add_request("eos", prompt, SamplingParams(max_tokens=12, temperature=0.0))
    out = run_to_completion(engine)["eos"]
    assert tokens_of(out) == reference[: reference.index(stop_at) + 1]
    assert out[-1].finish_reason is FinishReason.STOP and out[-1].stop_reason is None
    engine.add_request("ignore", prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    assert tokens_of(run_to_completion(engine)["ignore"]) == reference

    engine.add_request("gone", prompt, greedy(max_tokens=50))
    engine.step()
    assert engine.pool.num_used_blocks > 0
    aborted = engine.abort("gone")
    assert aborted is not None and aborted.finished and aborted.finish_reason is FinishReason.ABORT
    assert engine.pool.num_used_blocks == 0 and not engine.has_unfinished
