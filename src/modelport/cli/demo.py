"""`modelport up --demo`: import the digits example in two versions, deploy 80/20, show predictions."""

from __future__ import annotations

import importlib.util
import io
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from rich.panel import Panel

from modelport.cli.output import console, table
from modelport.cli.services import wait_with_progress
from modelport.client import ApiError, Client
from modelport.settings import Settings

SERVICE = "digits"
VERSIONS = (("1.0.0", 80), ("2.0.0", 20))


def examples_dir() -> Path:
    """The repository's examples/ (the demo runs from a checkout), or $MODELPORT_EXAMPLES_DIR."""
    candidates = [
        os.environ.get("MODELPORT_EXAMPLES_DIR"),
        Path.cwd() / "examples",
        Path(__file__).resolve().parents[3] / "examples",
    ]
    for c in candidates:
        if c and (Path(c) / "digits" / "build.py").exists():
            return Path(c)
    raise FileNotFoundError(
        "examples/digits not found; run the demo from a modelport checkout or set MODELPORT_EXAMPLES_DIR"
    )


def _build(dest: Path) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("digits_build", examples_dir() / "digits" / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build(dest)


def _model_id(c: Client, version: str, path: Path) -> str:
    found = c.list_models(model_name=SERVICE, exact_match=True, model_version=version)["models"]
    if found and found[0]["model_status"] == "published":
        return found[0]["model_id"]
    for m in found:
        c.delete_model(m["model_id"])
    model_id = c.import_model(SERVICE, version, "Scikit_Learn", path, description="digits demo")
    model = c.wait_model(model_id)
    if model["model_status"] != "published":
        raise RuntimeError(f"model digits {version} failed to publish: {model.get('failed_reason')}")
    return model_id


def _service(c: Client, model_ids: dict[str, str]) -> str:
    config = [
        {"model_id": model_ids[v], "weight": w, "specification": "modelarts.vm.cpu.1u", "instance_count": 1}
        for v, w in VERSIONS
    ]
    for svc in c.list_services(service_name=SERVICE)["services"]:
        if svc["service_name"] == SERVICE:
            if svc["status"] in ("stopped", "failed"):
                c.update_service(svc["service_id"], {"status": "running"})
            return svc["service_id"]
    return c.create_service(
        {"service_name": SERVICE, "infer_type": "real-time", "config": config, "description": "digits demo"}
    )


def _png(pixels: Any) -> bytes:
    from PIL import Image

    img = Image.fromarray((255 - pixels.reshape(8, 8) * 255 / 16).astype("uint8"), mode="L").resize((64, 64))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def run_demo(settings: Settings) -> None:
    from sklearn.datasets import load_digits

    api_url = f"http://{settings.host}:{settings.port}"
    c = Client.from_credentials(settings.credentials_file, api_url)
    with console.status("Building the digits example (two versions)…"):
        paths = _build(settings.home / "examples" / "digits")
    console.print("Importing models digits 1.0.0 (logistic regression) and 2.0.0 (random forest)…")
    model_ids = {v: _model_id(c, v, paths[v]) for v, _w in VERSIONS}
    service_id = _service(c, model_ids)
    console.print(f"Deploying service [bold]{SERVICE}[/] ({service_id}) weighted 80/20…")
    svc = wait_with_progress(c, service_id)
    if svc["status"] != "running":
        console.print(f"[red]Service is {svc['status']}: {svc.get('error_msg')}[/]")
        return
    digits = load_digits()
    rows = []
    counts: dict[str, int] = {}
    for n, idx in enumerate(range(0, 200, 20)):
        pixels = digits.data[idx]
        t0 = time.perf_counter()
        if n == 0:
            resp = c.predict_raw(service_id, files={"images": ("digit.png", _png(pixels), "image/png")})
            how = "PNG upload"
        else:
            resp = c.predict_raw(service_id, json={"images": [pixels.tolist()]})
            how = "JSON pixels"
        ms = (time.perf_counter() - t0) * 1000
        body = resp.json()
        version = resp.headers.get("x-modelport-version", "?")
        counts[version] = counts.get(version, 0) + 1
        rows.append([n + 1, how, int(digits.target[idx]), body.get("predicted_label"), version, f"{ms:.1f}"])
    table("Predictions through the gateway", ["#", "Input", "True", "Predicted", "Version", "ms"], rows)
    console.print("Answered by: " + ", ".join(f"{v}: {k}" for v, k in sorted(counts.items())))
    sample = ",".join(str(int(x)) for x in digits.data[0])
    curl = (
        f"curl -s -X POST {api_url}/v1/infers/{service_id} "
        f"-H \"X-Auth-Token: $(.venv/bin/modelport token)\" -H 'Content-Type: application/json' "
        f"-d '{{\"images\": [[{sample}]]}}'"
    )
    console.print(
        Panel.fit(
            f"Base URL:    {api_url}\nAPI docs:    {api_url}/docs\nCredentials: {settings.credentials_file}\n"
            f"Service:     {SERVICE} ({service_id})",
            title="modelport demo is serving — Ctrl-C to stop",
        )
    )
    # Outside the panel so that it stays one line a terminal can copy.
    console.print("Try it:")
    console.print(curl, soft_wrap=True, highlight=False, markup=False)


def start_demo_thread(server: Any, settings: Settings) -> None:
    def main() -> None:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            run_demo(settings)
        except ApiError as exc:
            console.print(f"[red]Demo failed: {exc.error_code} {exc.message}[/]")
        except Exception:
            console.print(f"[red]Demo failed:[/]\n{traceback.format_exc()}")

    threading.Thread(target=main, name="modelport-demo", daemon=True).start()
