"""Model implementations of the LLM runtime (PyTorch forward passes over the paged KV cache)."""
