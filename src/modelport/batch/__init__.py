"""Batch services (spec §6): run a model over a data set, checkpointed so nothing is lost or doubled.

`spec` interprets and validates a batch config; `storage` resolves local/file/s3 URLs; `sources`
streams inputs into records (`mapping` builds CSV requests); `calls` sends a record to an
instance; `outputs` writes result files and the manifest; `checkpoint` keeps progress in the
store; `job` runs one job; `runner` drives all of them next to the orchestrator.
"""
