"""Gateway (data plane): `/v1/infers/{service_id}/...` — auth, limits, balancing, proxying."""
