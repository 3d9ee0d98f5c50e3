"""Control plane: the ModelArts-compatible management API (`/v1/{project_id}/...`, `/v3/auth/tokens`)."""
