"""ModelArts compatibility: `TfServingBaseService`, the TensorFlow parent class (spec §3.3)."""

from modelport.runtime.base_service import BaseService


class TfServingBaseService(BaseService):
    """TensorFlow models: no TF Serving behind it; load the SavedModel in `__init__`."""


__all__ = ["TfServingBaseService"]
