"""Orchestrator: reconciles each service's desired config with the instances that run it."""
