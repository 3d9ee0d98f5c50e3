"""Instance runtimes: what runs inside one instance (`python -m modelport.runtime DIR`).

Kept import-light on purpose: an instance imports only this package, `modelport.packages`
and `modelport.errors`, so it starts fast. See `__main__.run_instance` for the entry point.
"""
