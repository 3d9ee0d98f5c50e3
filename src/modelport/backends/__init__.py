"""Backends: where instances run (local processes; Ray later), behind one interface."""
