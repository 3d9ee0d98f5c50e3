"""BaseService (the inference-code contract), the ModelArts alias modules and the handler loader."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from runtime_support import write_package

import modelport
from modelport.packages import load_package
from modelport.runtime.base_service import BaseService
from modelport.runtime.loader import HandlerLoadError, construct, load_service, pick_service_class

ALIASES = [
    ("model_service.pytorch_model_service", "PTServingBaseService"),
    ("model_service.tfserving_model_service", "TfServingBaseService"),
    ("model_service.python_model_service", "XgSklServingBaseService"),
    ("model_service.model_service", "SingleNodeService"),
    ("model_service.caffe_model_service", "CaffeBaseService"),
    ("model_service.spark_model_service", "SparkServingBaseService"),
    ("mms.model_service.mxnet_model_service", "MXNetBaseService"),
]


def test_public_export() -> None:
    assert modelport.BaseService is BaseService


@pytest.mark.parametrize(("module", "name"), ALIASES)
def test_modelarts_imports_work(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BaseService)
    service = cls("m", "/models/m/model")
    assert (service.model_name, service.model_path) == ("m", "/models/m/model")
    assert service.inference({"a": 1}) == {"a": 1}


def test_default_hooks_pass_data_through() -> None:
    service = BaseService("name", "/p/model")
    data = {"x": [1, 2]}
    assert service._preprocess(data) is data
    assert service._inference(data) is data
    assert service._postprocess(data) is data
    assert service.inference(data) is data


def test_inference_runs_the_hooks_in_order() -> None:
    class Service(BaseService):
        def _preprocess(self, data: Any) -> Any:
            return [*data, "pre"]

        def _inference(self, data: Any) -> Any:
            return [*data, "infer"]

        def _postprocess(self, data: Any) -> Any:
            return {"steps": [*data, "post"]}

    assert Service("n", "p").inference([]) == {"steps": ["pre", "infer", "post"]}


def test_one_argument_super_call_is_the_model_path() -> None:
    class MlService(BaseService):
        def __init__(self, model_path: str) -> None:
            super().__init__(model_path)

    service = MlService("/models/iris/model")
    assert service.model_path == "/models/iris/model"
    assert service.model_name == "iris"


class TwoArgs(BaseService):
    def __init__(self, model_name: str, model_path: str) -> None:
        super().__init__(model_name, model_path)
        self.args = (model_name, model_path)


class OneArg(BaseService):
    def __init__(self, model_path: str) -> None:
        self.args = (model_path,)  # no super().__init__: the loader sets the attributes


class OneArgWithOption(BaseService):
    def __init__(self, model_path: str, device: str = "cpu") -> None:
        self.args = (model_path, device)


class NoArgs(BaseService):
    def __init__(self) -> None:
        self.args = ()


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (TwoArgs, ("digits", "/pkg/model")),
        (OneArg, ("/pkg/model",)),
        (OneArgWithOption, ("/pkg/model", "cpu")),
        (NoArgs, ()),
        (BaseService, None),
    ],
)
def test_construct_detects_the_init_signature(cls: type[BaseService], args: tuple[str, ...] | None) -> None:
    service = construct(cls, "digits", "/pkg/model")
    if args is not None:
        assert service.args == args  # type: ignore[attr-defined]
    assert (service.model_name, service.model_path) == ("digits", "/pkg/model")


def _module(**classes: type) -> Any:
    module = type(sys)("customize_service")
    for cls in classes.values():
        cls.__module__ = "customize_service"
    module.__dict__.update(classes, BaseService=BaseService)
    module.__file__ = "/pkg/model/customize_service.py"
    return module


def test_pick_the_only_service_class() -> None:
    cls = type("Mine", (BaseService,), {})
    assert pick_service_class(_module(Mine=cls, Other=type("Other", (), {}))) is cls


def test_pick_the_most_derived_class() -> None:
    base = type("Base", (BaseService,), {})
    leaf = type("Leaf", (base,), {})
    assert pick_service_class(_module(Base=base, Leaf=leaf)) is leaf


def test_no_service_class_is_an_error() -> None:
    with pytest.raises(HandlerLoadError, match="defines no subclass of BaseService"):
        pick_service_class(_module())


def test_several_service_classes_is_an_error() -> None:
    a, b = type("A", (BaseService,), {}), type("B", (BaseService,), {})
    with pytest.raises(HandlerLoadError, match=r"several service classes \(A, B\)"):
        pick_service_class(_module(A=a, B=b))


def test_load_service_imports_helpers_next_to_the_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "customize_service", raising=False)
    monkeypatch.delitem(sys.modules, "rt_helper_mod", raising=False)
    files = {
        "rt_helper_mod.py": "def double(x):\n    return 2 * x\n",
        "customize_service.py": (
            "from model_service.pytorch_model_service import PTServingBaseService\n"
            "from rt_helper_mod import double\n"
            "class Svc(PTServingBaseService):\n"
            "    def _inference(self, data):\n"
            "        return double(data)\n"
        ),
    }
    root = write_package(tmp_path / "pkg", {"model_type": "PyTorch", "model_name": "named"}, files)
    service = load_service(load_package(root))
    assert type(service).__name__ == "Svc"
    assert service.inference(21) == 42
    assert (service.model_name, service.model_path) == ("named", str(root / "model"))
