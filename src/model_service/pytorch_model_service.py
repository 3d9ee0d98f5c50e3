"""ModelArts compatibility: `PTServingBaseService`, the PyTorch parent class of inference code (spec §3.3)."""

from modelport.runtime.base_service import BaseService


class PTServingBaseService(BaseService):
    """PyTorch models: load the weights in `__init__(self, model_name, model_path)`."""


__all__ = ["PTServingBaseService"]
