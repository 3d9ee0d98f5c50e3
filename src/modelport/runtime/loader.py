"""Handler loading: import a package's `customize_service.py`, pick its service class, construct it.

The rules (the message of every failure says which one broke):
* `model/` goes first on `sys.path`, so helper modules next to `customize_service.py` import
  as plain top-level modules (spec §3.1); the module itself is registered as
  `customize_service` in `sys.modules` (pickles that reference it load).
* The service class is the class defined in that module that subclasses `BaseService`
  (directly or through a `model_service.*` alias). When the module defines a base and a
  subclass of it, the most derived one is taken; two unrelated classes are an error.
* The class is called as `cls(model_name, model_path)` or, when its `__init__` takes a
  single `model_path` (the ML-engine form), `cls(model_path)`. `model_name` and `model_path`
  are set afterwards if the subclass's `__init__` did not call `super().__init__`.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from modelport.packages import HANDLER_FILE, ModelPackage
from modelport.runtime.base_service import BaseService


class HandlerLoadError(Exception):
    """The package's code imported, but does not define a usable service class."""


def load_service(package: ModelPackage) -> BaseService:
    module = import_handler(package.model_dir)
    cls = pick_service_class(module)
    return construct(cls, package.model_name, str(package.model_dir))


def import_handler(model_dir: Path) -> ModuleType:
    path = model_dir / HANDLER_FILE
    model_dir_str = str(model_dir)
    if model_dir_str not in sys.path:
        sys.path.insert(0, model_dir_str)
    spec = importlib.util.spec_from_file_location("customize_service", path)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["customize_service"] = module
    spec.loader.exec_module(module)  # the user's import errors propagate with their own traceback
    return module


def pick_service_class(module: ModuleType) -> type[BaseService]:
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseService) and obj.__module__ == module.__name__
    ]
    if not candidates:
        raise HandlerLoadError(
            f"{module.__file__} defines no subclass of BaseService. Define one, e.g. "
            "`class MyService(PTServingBaseService)` with "
            "`from model_service.pytorch_model_service import PTServingBaseService` "
            "(or `from modelport import BaseService`)."
        )
    # A module may define its own intermediate base: keep the classes nothing else derives from.
    leaves = [c for c in candidates if not any(o is not c and issubclass(o, c) for o in candidates)]
    if len(leaves) > 1:
        names = ", ".join(sorted(c.__name__ for c in leaves))
        raise HandlerLoadError(
            f"{module.__file__} defines several service classes ({names}); keep exactly one "
            "(move the others to a helper module)."
        )
    return leaves[0]


def construct(cls: type[BaseService], model_name: str, model_path: str) -> BaseService:
    args = (model_name, model_path)[2 - _init_arity(cls) :]
    service = cls(*args)
    # ModelArts code often overrides __init__ without calling super().__init__.
    if not getattr(service, "model_path", None):
        service.model_path = model_path
    if not getattr(service, "model_name", None):
        service.model_name = model_name
    return service


def _init_arity(cls: type[BaseService]) -> int:
    """2 for `(model_name, model_path)`, 1 for the ML-engine `(model_path)`, 0 for `()`."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        return 0
    # `(self, model_path, extra=None)` is still the ML form: go by the first parameter's name.
    return 1 if len(positional) == 1 or positional[0].name == "model_path" else 2
