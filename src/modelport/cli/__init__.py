"""Command-line interface: `modelport up`, `model …`, `service …`, `predict`."""
