"""Prefix affinity: which instance of an LLM service most likely holds a request's prompt prefix in its KV cache.

An LLM instance reuses the KV cache of a prompt prefix it has seen (prefix caching), so requests
that share a prefix — the same system prompt, the earlier turns of one chat — are cheapest on the
instance that served that prefix before. The gateway cannot tokenize, so it keys prefixes by a hash
chain over what it can see in the request body (`prompt_chain`):

- `/chat/completions`: one link per message, `link_i = H(link_{i-1} || canonical JSON of message i)`,
  so link i names messages 0..i; a chat's next turn repeats all links of the previous one;
- `/completions`: one link per `CHUNK_BYTES` bytes of the UTF-8 prompt (or `CHUNK_TOKENS` ids of a
  tokenized prompt), the last, shorter piece included.

The root of a chain is keyed by the request's `cache_salt`, as the engine's is, so tenants that
separate their caches are routed apart too.

`Affinity.pick` chooses among a version's instances: the one the deepest link of the chain was
routed to (a bounded LRU of recent decisions, `AffinityMap`; a prefix keeps the first instance that
served it as its home), else, for a new prefix, the less loaded of the two rendezvous (HRW) winners
of its first link (its system prompt: the same instances on every gateway); but never an instance
whose outstanding requests exceed `(1 + epsilon) * average + slack`: then the least-outstanding one,
and only the request's own new links follow it there. Invariants (property-tested):
- bounded load: the chosen instance had at most `(1 + epsilon) * average + slack` outstanding;
- while nothing is overloaded, the same chain goes to the same instance as long as it is up;
- an instance leaving remaps only the chains that were on it.
Routing never affects answers: a wrong guess (an evicted cache, an instance that came or went)
only costs a cold prefill.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from hashlib import blake2b
from typing import Any, Protocol

# Bodies up to this size are held and parsed to find the prompt (LLM requests are small JSON).
MAX_BODY = 1024 * 1024
CHUNK_BYTES = 256  # a KV block of 16 tokens is some 64 bytes of text: a link per few blocks
CHUNK_TOKENS = 64
MAX_LINKS = 512  # deeper prompts are keyed by their first MAX_LINKS links
_DIGEST = 16


class Routable(Protocol):
    """What the chooser needs of an instance (balance.Target)."""

    instance_id: str
    instance_b: bytes


def prompt_chain(path: bytes, body: bytes) -> list[bytes] | None:
    """The hash chain of the prompt of an OpenAI-style request, or None when it has none we know."""
    path = path.partition(b"?")[0].rstrip(b"/")
    chat = path.endswith(b"/chat/completions")
    if not chat and not path.endswith(b"/completions"):
        return None
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(request, dict):
        return None
    salt = request.get("cache_salt")
    root = _link(b"", salt.encode() if isinstance(salt, str) else b"")
    pieces = _messages(request.get("messages")) if chat else _prompt_pieces(request.get("prompt"))
    if not pieces:
        return None
    chain = []
    link = root
    for piece in pieces[:MAX_LINKS]:
        link = _link(link, piece)
        chain.append(link)
    return chain


def _link(parent: bytes, piece: bytes) -> bytes:
    return blake2b(parent + piece, digest_size=_DIGEST).digest()


def _messages(messages: Any) -> list[bytes]:
    if not isinstance(messages, list):
        return []
    return [json.dumps(m, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode() for m in messages]


def _prompt_pieces(prompt: Any) -> list[bytes]:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of prompts: keyed by the first
    if isinstance(prompt, str):
        raw = prompt.encode()
        step = CHUNK_BYTES
        return [raw[i : i + step] for i in range(0, len(raw), step)]
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        step = CHUNK_TOKENS
        return [b",".join(b"%d" % t for t in prompt[i : i + step]) for i in range(0, len(prompt), step)]
    return []


def rendezvous(key: bytes, targets: Sequence[Routable]) -> Routable | None:
    """The highest-random-weight target for `key`: stable while it is up, and only its keys move when it leaves."""
    return rendezvous_two(key, targets)[0]


def rendezvous_two(key: bytes, targets: Sequence[Routable]) -> tuple[Routable | None, Routable | None]:
    """The two highest-random-weight targets for `key`."""
    best = second = None
    best_score = second_score = b""
    for target in targets:
        score = blake2b(key + target.instance_b, digest_size=8).digest()
        if score > best_score:
            second, second_score = best, best_score
            best, best_score = target, score
        elif score > second_score:
            second, second_score = target, score
    return best, second


class AffinityMap:
    """Recent routing decisions: chain link -> instance id; at most `capacity` links, least recent evicted."""

    __slots__ = ("_links", "capacity")

    def __init__(self, capacity: int = 16384) -> None:
        self.capacity = capacity
        self._links: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._links)

    def deepest(self, chain: Sequence[bytes], present: dict[str, Routable]) -> Routable | None:
        """The instance the deepest link was routed to, among `present` (links to gone instances skipped)."""
        links = self._links
        for link in reversed(chain):
            instance_id = links.get(link)
            if instance_id is not None:
                target = present.get(instance_id)
                if target is not None:
                    return target
        return None

    def record(self, chain: Sequence[bytes], instance_id: str, present: Container[str]) -> None:
        """`chain` was routed to `instance_id`. A link already routed to an instance still `present`
        stays with it: the first instance to serve a prefix remains its home (no churn between
        instances that both hold it); links new, or of instances gone, go to `instance_id`."""
        links = self._links
        for link in chain:
            if links.get(link) not in present:
                links[link] = instance_id
            links.move_to_end(link)
        while len(links) > self.capacity:
            links.popitem(last=False)


class Affinity:
    """The prefix-affinity chooser of one service: its recent decisions and its load bound."""

    __slots__ = ("epsilon", "map", "slack")

    def __init__(self, *, epsilon: float = 0.5, slack: int = 2, capacity: int = 16384) -> None:
        self.epsilon = epsilon
        self.slack = slack
        self.map = AffinityMap(capacity)

    def bound(self, load: dict[str, int], targets: Sequence[Routable]) -> float:
        """The most outstanding requests a preferred instance may have and still be chosen."""
        total = 0
        for target in targets:
            total += load.get(target.instance_id, 0)
        return (1 + self.epsilon) * total / len(targets) + self.slack

    def prefer(
        self, chain: Sequence[bytes], targets: Sequence[Routable], load: dict[str, int] | None = None
    ) -> Routable | None:
        """The instance `chain` should go to, load aside: where its deepest known link went; for a new
        prefix, the less loaded of the two rendezvous winners of its first link (two choices keep a
        few big tenants from piling up on one instance; with equal loads it is the first winner)."""
        present = {t.instance_id: t for t in targets}
        home = self.map.deepest(chain, present)
        if home is not None:
            return home
        first, second = rendezvous_two(chain[0], targets)
        if load and second is not None and load.get(second.instance_id, 0) < load.get(first.instance_id, 0):  # type: ignore[union-attr]
            return second
        return first

    def choose(self, chain: Sequence[bytes], targets: Sequence[Routable], load: dict[str, int]) -> Routable | None:
        """The preferred instance unless it is over the bound (then None: use least-outstanding)."""
        if not targets:
            return None
        preferred = self.prefer(chain, targets, load)
        if preferred is None or load.get(preferred.instance_id, 0) > self.bound(load, targets):
            return None
        return preferred

    def pick(
        self,
        chain: Sequence[bytes],
        targets: Sequence[Routable],
        load: dict[str, int],
        least_outstanding: Callable[[], Routable | None],
    ) -> Routable | None:
        """The instance for `chain` (`choose`, else `least_outstanding()`), remembered for the next ones.

        A request that had to go elsewhere does not move the prefix it shares with others (new chats
        of its system prompt still go to that prompt's home); only its own new links follow it, so
        its chat goes on where its history now is.
        """
        chosen = self.choose(chain, targets, load) or least_outstanding()
        if chosen is not None:
            self.map.record(chain, chosen.instance_id, {t.instance_id for t in targets})
        return chosen
