"""The service's tooling, by job: `packaging` (checkpoint -> validated archive), `ops` (start,
stop, probe, scale, inspect a server), `bench` (load generation and benchmarks). `repo` knows
where things are in this repository. Installed with `pip install -e .` (pyproject.toml).

Imports flow one way: bench -> ops -> handler and bench -> packaging -> handler; ops never
imports packaging (a runtime image has no build dependencies) and handler never imports scripts.
"""
