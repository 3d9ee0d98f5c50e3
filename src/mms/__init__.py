"""ModelArts compatibility: the old MXNet Model Server namespace (`mms.model_service`)."""
