"""ModelArts compatibility: `SingleNodeService`, the MindSpore parent class of inference code (spec §3.3)."""

from modelport.runtime.base_service import BaseService


class SingleNodeService(BaseService):
    """MindSpore models (`SingleNodeService`): load the checkpoint in `__init__` and override `_inference`."""


__all__ = ["SingleNodeService"]
