"""Backends: each takes a prepared Sweep and returns a Result (`run(sweep) -> Result`)."""
