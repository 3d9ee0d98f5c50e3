"""ModelArts compatibility: `mms.model_service.*` base classes, all `modelport.BaseService`."""
