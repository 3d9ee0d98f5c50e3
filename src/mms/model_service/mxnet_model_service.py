"""ModelArts compatibility: `MXNetBaseService`, the MXNet parent class of customize_service.py (spec §3.3)."""

from modelport.runtime.base_service import BaseService


class MXNetBaseService(BaseService):
    """MXNet models: load symbol and params in `__init__(self, model_name, model_path)`."""


__all__ = ["MXNetBaseService"]
