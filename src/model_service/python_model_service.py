"""ModelArts compatibility: `XgSklServingBaseService`, the XGBoost/Scikit_Learn parent class (spec §3.3)."""

from modelport.runtime.base_service import BaseService


class XgSklServingBaseService(BaseService):
    """XGBoost and scikit-learn models: `__init__(self, model_path)`; model_path is the model/ directory."""


__all__ = ["XgSklServingBaseService"]
