"""An LLM model deployed as a real-time service: the openai client works through the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import make_platform

pytestmark = pytest.mark.slow


def test_llm_service_through_the_gateway(tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    from modelport.llm.testing import build_package

    pkg = build_package(tmp_path / "tiny-llm", llm={"max_model_len": 256})
    p = make_platform(tmp_path, MODELPORT_LLM_DTYPE="float32")
    p.start()
    c = p.client()
    try:
        mid = c.import_model("tiny-llm", "1.0.0", "LLM", pkg)
        assert c.wait_model(mid)["model_status"] == "published"
        sid = c.create_service(
            {
                "service_name": "chat",
                "infer_type": "real-time",
                "config": [
                    {"model_id": mid, "weight": 100, "specification": "modelarts.vm.cpu.1u", "instance_count": 1}
                ],
            }
        )
        svc = c.wait_service(sid, timeout=180)
        assert svc["status"] == "running", svc
        p.instance_pids()
        client = openai.OpenAI(
            base_url=f"{p.url}/v1/infers/{sid}/v1", api_key="unused", default_headers={"X-Auth-Token": c.token()}
        )
        model = client.models.list().data[0].id
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=8, temperature=0
        )
        assert out.choices[0].message.content is not None
        assert out.usage.completion_tokens > 0
        chunks = list(
            client.completions.create(
                model=model,
                prompt="once upon a time",
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        # the engines' figures are summarised in ShowService
        from tests.conftest import wait_until

        stats = wait_until(
            lambda: (st := c.get_service(sid).get("llm_stats")) and st["generation_tokens_total"] >= 14 and st,
            20,
            what="llm_stats in ShowService",
        )
        assert stats["instances_reporting"] == 1 and stats["kv_blocks_total"] > 0
        assert stats["prefix_cache_queried_tokens"] > 0 and stats["mean_ttft_s"] > 0
        # an OpenAI-style 400 from the model passes through the gateway untouched
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=model, prompt="x", max_tokens=-1)
        assert "max_tokens" in str(info.value)
    finally:
        c.close()
        p.stop()
