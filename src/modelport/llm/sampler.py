"""The sampler: turns a step's logits into next tokens (and logprobs), one row per sampling request.

Per row, in this order (vLLM's conventions):

1. logprobs, if asked, are those of the raw model distribution (`log_softmax` of the logits);
2. penalties: repetition (`p`: a logit `l` of a token already in the prompt or output becomes
   `l / p` if positive, `l * p` if not), then frequency and presence (OpenAI: `l -= f * count +
   pr * (count > 0)` over the output tokens so far);
3. temperature 0 is greedy (argmax of the penalized logits). Otherwise logits are divided by the
   temperature, then min_p (drop tokens whose probability is below `min_p` times the top one),
   top_k (keep the k most likely; -1 or 0 = all) and top_p (keep the smallest set of most likely
   tokens whose mass reaches `top_p`) are applied, and a token is drawn from what remains.

A request with a `seed` draws from its own `torch.Generator`, seeded once, so its output
depends only on its logits and seed — not on what else is in the batch. Others share the
sampler's generator.
"""

from __future__ import annotations

import torch

from modelport.llm.request import Request, TokenLogprob


class Sampler:
    def __init__(self, seed: int | None = None) -> None:
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> list[tuple[int, TokenLogprob | None]]:
        """Next token (and its logprobs, when the request asked) for each row of `logits` [n, vocab]."""
        want_logprobs = [r.params.logprobs is not None for r in requests]
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None
        logits = logits.clone()
        for i, req in enumerate(requests):
            if req.params.has_penalties:
                apply_penalties(logits[i], req)
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if random_rows:
            idx = torch.tensor(random_rows)
            probs = filtered_probs(logits[idx], [requests[i] for i in random_rows])
            for j, i in enumerate(random_rows):
                gen = self._generator(requests[i])
                tokens[i] = torch.multinomial(probs[j], 1, generator=gen)[0]
        out: list[tuple[int, TokenLogprob | None]] = []
        for i, req in enumerate(requests):
            token = int(tokens[i])
            lp = None
            if raw_logprobs is not None and want_logprobs[i]:
                lp = token_logprob(raw_logprobs[i], token, req.params.logprobs or 0)
            out.append((token, lp))
        return out

    def _generator(self, req: Request) -> torch.Generator:
        if req.params.seed is None:
            return self.generator
        if req.generator is None:
            req.generator = torch.Generator()
            req.generator.manual_seed(req.params.seed)
        return req.generator


def apply_penalties(logits: torch.Tensor, req: Request) -> None:
    """Penalize one row of logits in place, as the module docstring defines."""
    p = req.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(req.all_token_ids)), dtype=torch.long)
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and req.output_token_ids:
        counts = torch.bincount(torch.tensor(req.output_token_ids), minlength=logits.shape[0])
        counts = counts[: logits.shape[0]].to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def filtered_probs(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """Probabilities after temperature, min_p, top_k and top_p, for rows that sample ([n, vocab])."""
    vocab = logits.shape[-1]
    temps = torch.tensor([r.params.temperature for r in requests], dtype=logits.dtype)
    logits = logits / temps[:, None]
    min_p = torch.tensor([r.params.min_p for r in requests], dtype=logits.dtype)
    if bool((min_p > 0).any()):
        probs = logits.softmax(dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    top_k = torch.tensor([r.params.top_k if r.params.top_k > 0 else vocab for r in requests])
    top_p = torch.tensor([r.params.top_p for r in requests], dtype=logits.dtype)
    if bool((top_k < vocab).any()) or bool((top_p < 1).any()):
        ordered, order = logits.sort(dim=-1, descending=True)
        ordered = ordered.masked_fill(torch.arange(vocab)[None, :] >= top_k[:, None], float("-inf"))
        sorted_probs = ordered.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        ordered = ordered.masked_fill((mass_before >= top_p[:, None]) & (top_p[:, None] < 1), float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, ordered)
    return logits.softmax(dim=-1)


def token_logprob(logprobs: torch.Tensor, token: int, top_n: int) -> TokenLogprob:
    top: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        values, ids = logprobs.topk(top_n)
        top = tuple((int(t), float(v)) for t, v in zip(ids, values, strict=True))
    return TokenLogprob(token, float(logprobs[token]), top)
