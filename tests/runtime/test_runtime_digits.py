"""The digits example end to end: build both versions, serve them, classify real digits from the data set."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from runtime_support import EXAMPLES, Instance, Launcher
from sklearn.datasets import load_digits


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("digits_build", EXAMPLES / "digits" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def servers(launch_shared: Launcher, packages: dict[str, Path]) -> Iterator[dict[str, Instance]]:
    instances = {version: launch_shared(path) for version, path in packages.items()}
    for instance in instances.values():
        instance.wait_healthy()
    yield instances


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits(return_X_y=True)


def test_build_writes_two_packages(packages: dict[str, Path]) -> None:
    assert sorted(packages) == ["1.0.0", "2.0.0"]
    for path in packages.values():
        assert {p.name for p in (path / "model").iterdir()} >= {
            "config.json",
            "customize_service.py",
            "model.pkl",
        }


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_json_batch_is_classified(
    servers: dict[str, Instance], digits: tuple[np.ndarray, np.ndarray], version: str
) -> None:
    x, y = digits
    response = httpx.post(servers[version].url + "/", json={"images": x[:10].tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == version
    assert [p["predicted_label"] for p in body["predictions"]] == [str(label) for label in y[:10]]
    scores = body["predictions"][0]["scores"]
    assert [label for label, _ in scores] == [str(d) for d in range(10)]
    assert sum(p for _, p in scores) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("shape", ["flat", "8x8", "data-key"])
def test_single_image_forms(servers: dict[str, Instance], digits: tuple[np.ndarray, np.ndarray], shape: str) -> None:
    x, y = digits
    image = x[3]
    body = {
        "flat": image.tolist(),
        "8x8": {"images": image.reshape(8, 8).tolist()},
        "data-key": {"data": [image.tolist()]},
    }
    response = httpx.post(servers["1.0.0"].url + "/", json=body[shape])
    assert response.status_code == 200, response.text
    assert response.json()["predicted_label"] == str(y[3])
    assert response.json()["model_version"] == "1.0.0"


def _png(pixels: np.ndarray, dark_on_light: bool) -> bytes:
    """An 8x8 digit of the data set drawn as a 32x32 grey PNG."""
    grey = pixels.reshape(8, 8) * (255 / 16)
    if dark_on_light:
        grey = 255 - grey
    image = Image.fromarray(grey.astype(np.uint8), mode="L").resize((32, 32), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_uploaded_images_are_classified(
    servers: dict[str, Instance], digits: tuple[np.ndarray, np.ndarray], version: str
) -> None:
    x, y = digits
    files = [("images", (f"{i}.png", _png(x[i], dark_on_light=i % 2 == 0), "image/png")) for i in (0, 7)]
    response = httpx.post(servers[version].url + "/", files=files[:1])
    assert response.status_code == 200, response.text
    assert response.json()["predicted_label"] == str(y[0])
    response = httpx.post(servers[version].url + "/", files=files)
    assert [p["predicted_label"] for p in response.json()["predictions"]] == [str(y[0]), str(y[7])]


def test_bad_input_is_a_model_error(servers: dict[str, Instance]) -> None:
    response = httpx.post(servers["1.0.0"].url + "/", json={"images": [[1, 2, 3]]})
    assert response.status_code == 500
    assert response.json()["erno"] == "MR.0105"
    assert "64 pixels" in response.json()["msg"]
