"""Prefix-aware routing of LLM services: prompt hash chains, the chooser's invariants (property tests),
and the gateway routing chats by prefix over real HTTP."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from gwtools import Env, service, table
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.gateway import prefix
from modelport.gateway.balance import Balancer
from modelport.gateway.prefix import Affinity, prompt_chain, rendezvous
from modelport.gateway.routes import Endpoint

CHAT = b"/v1/chat/completions"


def _chat(*messages: tuple[str, str], **extra: object) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": r, "content": c} for r, c in messages], **extra}).encode()


@dataclass(frozen=True)
class T:
    instance_id: str

    @property
    def instance_b(self) -> bytes:
        return self.instance_id.encode()


# -- chains ------------------------------------------------------------------------------------


def test_chat_turns_extend_the_chain_of_the_previous_turn() -> None:
    sys_a = ("system", "You are a helpful assistant. " * 20)
    turn1 = prompt_chain(CHAT, _chat(sys_a, ("user", "hi")))
    turn2 = prompt_chain(CHAT, _chat(sys_a, ("user", "hi"), ("assistant", "hello!"), ("user", "how are you")))
    assert turn1 is not None and turn2 is not None
    assert len(turn1) == 2 and len(turn2) == 4 and turn2[:2] == turn1
    other_user = prompt_chain(CHAT + b"?x=1", _chat(sys_a, ("user", "something else")))
    assert other_user is not None and other_user[0] == turn1[0] and other_user[1] != turn1[1]
    other_system = prompt_chain(CHAT, _chat(("system", "Be terse."), ("user", "hi")))
    assert other_system is not None and other_system[0] != turn1[0]
    salted = prompt_chain(CHAT, _chat(sys_a, ("user", "hi"), cache_salt="tenant-2"))
    assert salted is not None and salted[0] != turn1[0]  # tenants that separate caches are routed apart


def test_completion_prompts_are_chunked_and_other_requests_have_no_chain() -> None:
    base = "word " * 200  # 1,000 bytes: 3 full chunks and a tail
    chain = prompt_chain(b"/v1/completions", json.dumps({"prompt": base}).encode())
    longer = prompt_chain(b"/v1/completions", json.dumps({"prompt": base + "and more " * 50}).encode())
    assert chain is not None and longer is not None
    assert len(chain) == 4 and longer[:3] == chain[:3] and longer[3] != chain[3]
    tokens = prompt_chain(b"/v1/completions", json.dumps({"prompt": list(range(150))}).encode())
    assert tokens is not None and len(tokens) == 3  # 64 + 64 + 22 ids
    batch = prompt_chain(b"/v1/completions", json.dumps({"prompt": [base, "other"]}).encode())
    assert batch == chain
    assert prompt_chain(b"/v1/models", b"") is None
    assert prompt_chain(CHAT, b"{not json") is None
    assert prompt_chain(CHAT, b"[1, 2]") is None
    assert prompt_chain(CHAT, json.dumps({"messages": []}).encode()) is None
    assert prompt_chain(b"/v1/completions", json.dumps({"prompt": {"x": 1}}).encode()) is None


# -- the chooser -------------------------------------------------------------------------------

TARGETS = [T(f"i{n}") for n in range(8)]


def _chain_of(pieces: list[int]) -> list[bytes]:
    """A hash chain as prompt_chain makes them: equal links mean equal prefixes."""
    chain, link = [], b""
    for piece in pieces:
        link = prefix._link(link, b"%d" % piece)
        chain.append(link)
    return chain


# Few distinct pieces: chains share prefixes often, as the messages of chats do.
keys = st.lists(st.integers(0, 3), min_size=1, max_size=5).map(_chain_of)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 8),
    loads=st.lists(st.integers(0, 20), min_size=8, max_size=8),
    sequence=st.lists(keys, min_size=1, max_size=30),
)
def test_bounded_load_holds(n: int, loads: list[int], sequence: list[list[bytes]]) -> None:
    targets = TARGETS[:n]
    load = {t.instance_id: loads[i] for i, t in enumerate(targets)}
    affinity = Affinity(epsilon=0.25, slack=1)

    def least_outstanding() -> T:
        return min(targets, key=lambda t: load[t.instance_id])

    for chain in sequence:
        average = sum(load.values()) / n
        chosen = affinity.pick(chain, targets, load, least_outstanding)
        assert chosen is not None
        assert load[chosen.instance_id] <= 1.25 * average + 1  # the least loaded never is over it
        load[chosen.instance_id] += 1


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 8),
    sequence=st.lists(st.integers(0, 11), min_size=1, max_size=60),
    capacity=st.sampled_from([2, 8, 1000]),
)
def test_same_prefix_same_instance_while_nothing_is_overloaded(n: int, sequence: list[int], capacity: int) -> None:
    # Twelve conversations over three system prompts, turns in any order, maps small enough to evict.
    systems = [("system", f"prompt {s}") for s in range(3)]
    convs = [[systems[c % 3], ("user", f"conversation {c}")] for c in range(12)]
    targets = TARGETS[:n]
    affinity = Affinity(capacity=capacity)
    first_seen: dict[int, str] = {}
    by_system: dict[int, str] = {}
    for c in sequence:
        convs[c] += [("assistant", "ok"), ("user", f"turn {len(convs[c])}")]
        chain = prompt_chain(CHAT, _chat(*convs[c]))
        assert chain is not None
        chosen = affinity.pick(chain, targets, {}, lambda: None)
        assert chosen is not None
        assert first_seen.setdefault(c, chosen.instance_id) == chosen.instance_id
        assert by_system.setdefault(c % 3, chosen.instance_id) == chosen.instance_id


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 8), gone=st.integers(0, 7), sequence=st.lists(keys, min_size=1, max_size=40))
def test_an_instance_leaving_remaps_only_its_keys(n: int, gone: int, sequence: list[list[bytes]]) -> None:
    targets = TARGETS[:n]
    leaving = targets[gone % n]
    remaining = [t for t in targets if t is not leaving]
    affinity = Affinity()
    for chain in sequence:
        assert affinity.pick(chain, targets, {}, lambda: None) is not None
    for chain in sequence:
        before = affinity.prefer(chain, targets)
        after = affinity.prefer(chain, remaining)
        assert after is not None and after is not leaving
        if before is not leaving:
            assert after is before
        # and the bare hash ring agrees: keys not on the leaving instance stay put
        winner = rendezvous(chain[0], targets)
        if winner is not leaving:
            assert rendezvous(chain[0], remaining) is winner


def test_an_overloaded_home_is_passed_over_and_keeps_its_prefix() -> None:
    balancer = Balancer()
    endpoints = [Endpoint(f"i{n}", "127.0.0.1", 9000 + n) for n in range(4)]
    balancer.update(table(service("llm", [("v1", 100, endpoints)], policy="PREFIX_AFFINITY")))
    plan = balancer.plans["llm"]
    system = ("system", "shared system prompt")
    home = balancer.pick(plan, chain=prompt_chain(CHAT, _chat(system, ("user", "chat a"))))
    assert home is not None
    balancer.load[home.instance_id] = 10  # busy: over 1.5 * 2.5 + 2
    chat_b = [system, ("user", "chat b")]
    elsewhere = balancer.pick(plan, chain=prompt_chain(CHAT, _chat(*chat_b)))
    assert elsewhere is not None and elsewhere.instance_id != home.instance_id
    assert balancer.load.get(elsewhere.instance_id, 0) == 0  # the least outstanding
    del balancer.load[home.instance_id]
    # Chat b goes on where its history is; a new chat of the same system prompt still goes home.
    chat_b += [("assistant", "reply"), ("user", "more")]
    assert balancer.pick(plan, chain=prompt_chain(CHAT, _chat(*chat_b))) is elsewhere
    assert balancer.pick(plan, chain=prompt_chain(CHAT, _chat(system, ("user", "chat c")))) is home
    # The record survives a table update that keeps the instance, and is dropped with the service.
    moved = [*endpoints[:3], Endpoint("i9", "127.0.0.1", 9009)]
    balancer.update(table(service("llm", [("v1", 100, moved)], policy="PREFIX_AFFINITY")))
    assert balancer.plans["llm"].affinity is plan.affinity
    balancer.update(table())
    assert "llm" not in balancer.plans


# -- through the gateway -----------------------------------------------------------------------


async def test_gateway_routes_chats_by_prefix_and_forwards_the_exact_bytes(env: Env) -> None:
    ups = [await env.upstream(f"u{n}") for n in range(4)]
    eps = [u.endpoint for u in ups]
    client = await env.serve(table(service("llm", [("v1", 100, eps)], policy="PREFIX_AFFINITY", kind="llm")))
    where: dict[tuple[int, int], set[str]] = {}
    for turn in range(3):
        for system in range(4):
            for user in range(3):
                messages = [("system", f"system prompt {system} " * 30), ("user", f"user {user}")]
                for t in range(turn):
                    messages += [("assistant", f"reply {t}"), ("user", f"turn {t}")]
                body = _chat(*messages, stream=False)
                r = await client.post("/v1/infers/llm/v1/chat/completions", content=body)
                assert r.status_code == 200
                assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()  # never re-encoded
                where.setdefault((system, user), set()).add(r.headers["x-upstream"])
    # Sequential requests never overload anyone: every turn of a chat, and every chat of a system
    # prompt, went to one instance.
    assert all(len(s) == 1 for s in where.values()), where
    for system in range(4):
        assert len({next(iter(where[(system, u)])) for u in range(3)}) == 1
    # A body over the replay limit (64 KB) but under prefix.MAX_BODY is held, routed and forwarded whole.
    big = _chat(("system", "x" * 200_000), ("user", "hi"))
    r = await client.post("/v1/infers/llm/v1/chat/completions", content=big)
    assert r.status_code == 200 and r.json()["body_sha256"] == hashlib.sha256(big).hexdigest()
    assert len(big) < prefix.MAX_BODY
    # Requests without a prompt go by least outstanding.
    assert (await client.get("/v1/infers/llm/v1/models")).status_code == 200
