"""The built-in LLM runtime: a continuous-batching engine with a paged, prefix-cached KV cache.

Parts, each owning one thing (see their docstrings): `block_pool` (KV blocks), `kv_cache_manager`
(per-request block tables, prefix caching), `scheduler` (what runs in each step),
`model_runner` + `models/` (the forward pass), `sampler`, `detokenizer`, `engine` (the step loop),
`server` (the OpenAI-compatible instance). `python -m modelport.llm DIR` serves a package.
"""
