"""ModelArts compatibility: `CaffeBaseService`, the Caffe parent class of customize_service.py (spec §3.3)."""

from modelport.runtime.base_service import BaseService


class CaffeBaseService(BaseService):
    """Caffe models: load the net in `__init__(self, model_name, model_path)` and override `_inference`."""


__all__ = ["CaffeBaseService"]
