"""Fault-injection helpers: a worker process and the harness that drives it."""
