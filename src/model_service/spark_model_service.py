"""ModelArts compatibility: `SparkServingBaseService`, the PySpark parent class (spec §3.3)."""

from modelport.runtime.base_service import BaseService


class SparkServingBaseService(BaseService):
    """PySpark models: no SparkSession is made for you (`self.spark`); create one in `__init__`."""


__all__ = ["SparkServingBaseService"]
