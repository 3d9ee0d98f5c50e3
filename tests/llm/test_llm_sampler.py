"""Sampler: each knob does what its definition says."""

from __future__ import annotations

import torch

from modelport.llm.request import Request, SamplingParams
from modelport.llm.sampler import Sampler, apply_penalties, filtered_probs

VOCAB = 50


def req(prompt: list[int] | None = None, output: list[int] | None = None, **params: object) -> Request:
    r = Request("r", prompt or [1, 2, 3], SamplingParams(**params))  # type: ignore[arg-type]
    for t in output or []:
        r.append_token(t)
    return r


def logits(seed: int = 0, rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_equivalent_knobs_agree() -> None:
    x = logits(rows=4)
    s = Sampler(seed=0)
    expected = x.argmax(-1).tolist()
    assert [t for t, _ in s(x, [req(temperature=0.0) for _ in range(4)])] == expected
    for knob in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        for seed in range(5):
            got = [t for t, _ in s(x, [req(temperature=1.5, seed=seed, **knob) for _ in range(4)])]
            assert got == expected, knob


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    x = logits()
    top5 = set(x[0].topk(5).indices.tolist())
    probs = filtered_probs(x.clone(), [req(top_k=5)])
    assert set(torch.nonzero(probs[0]).flatten().tolist()) == top5
    p_sorted, _ = x[0].softmax(-1).sort(descending=True)
    # the smallest prefix of most likely tokens reaching 0.5 of the mass
    need = int((p_sorted.cumsum(0) < 0.5).sum()) + 1
    probs = filtered_probs(x.clone(), [req(top_p=0.5)])
    assert int((probs[0] > 0).sum()) == need
    assert torch.allclose(probs.sum(-1), torch.ones(1))


def test_min_p_drops_tokens_below_the_scaled_top_probability() -> None:
    x = logits()
    p = x[0].softmax(-1)
    probs = filtered_probs(x.clone(), [req(min_p=0.2)])
    assert set(torch.nonzero(probs[0]).flatten().tolist()) == set(torch.nonzero(p >= 0.2 * p.max()).flatten().tolist())


def test_temperature_flattens_or_sharpens() -> None:
    x = logits()
    hot = filtered_probs(x.clone(), [req(temperature=5.0)])
    cold = filtered_probs(x.clone(), [req(temperature=0.2)])
    assert hot.max() < x.softmax(-1).max() < cold.max()


def test_penalties_change_logits_as_defined() -> None:
    x = torch.tensor([2.0, -2.0, 1.0, 0.5, 3.0])
    r = req(prompt=[0, 1], output=[2, 2, 3], repetition_penalty=2.0)
    y = x.clone()
    apply_penalties(y, r)
    assert y.tolist() == [1.0, -4.0, 0.5, 0.25, 3.0]  # seen: positive / p, negative * p
    r = req(prompt=[0, 1], output=[2, 2, 3], frequency_penalty=0.5, presence_penalty=0.25)
    y = x.clone()
    apply_penalties(y, r)
    # output counts: token 2 twice, token 3 once; prompt tokens are not penalized by these two
    assert y.tolist() == [2.0, -2.0, 1.0 - 1.0 - 0.25, 0.5 - 0.5 - 0.25, 3.0]


def test_penalty_changes_the_greedy_choice() -> None:
    x = torch.tensor([[0.0, 5.0, 4.9, 0.0]])
    s = Sampler(seed=0)
    assert s(x, [req(output=[1], temperature=0.0)])[0][0] == 1
    assert s(x, [req(output=[1], temperature=0.0, presence_penalty=0.5)])[0][0] == 2


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch() -> None:
    x = logits().repeat(3, 1)

    def draw(batch_seeds: list[int | None], steps: int = 20) -> list[list[int]]:
        s = Sampler()
        reqs = [req(temperature=1.0, seed=seed) for seed in batch_seeds]
        return [[t for t, _ in s(x, reqs)] for _ in range(steps)]

    a = [row[0] for row in draw([7, None, 3])]
    b = [row[2] for row in draw([None, 1, 7])]
    assert a == b, "the same seed gives the same tokens wherever the request sits in the batch"
    c = [row[0] for row in draw([8, None, 3])]
    assert a != c


def test_logprobs_are_the_raw_distribution_with_top_n() -> None:
    x = logits()
    ((token, lp),) = Sampler(seed=0)(x, [req(temperature=0.0, logprobs=3, repetition_penalty=1.5)])
    ref = torch.log_softmax(x[0], -1)
    assert lp is not None and lp.token_id == token
    assert abs(lp.logprob - float(ref[token])) < 1e-6
    assert [t for t, _ in lp.top] == ref.topk(3).indices.tolist()
    assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
