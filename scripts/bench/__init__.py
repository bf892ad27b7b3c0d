"""Benchmarks, by kind:

- `load/`: the open-loop load generator (`loadtest`) and the side-by-side served benchmark behind
  `make bench` (`main` and the modules it uses: services, artifacts, levers, inproc, report);
- `peers/`: the servers `make bench` compares ours with (FastAPI, Triton two ways, BentoML), the
  peers' own virtual environment, and the generator's floor (a server with no model);
- `micro/`: no server: the forward pass, one request's cost, crafted images, the GPU and
  large-model runs;
- `scenarios/`: reliability and slow-client runs that write RELIABILITY.md.

Shared by all: `stats`, the one definition of a percentile (and median) every report
uses; `markdown`, rewriting a generated section of BENCHMARKS.md or RELIABILITY.md; `workspace`,
build/bench/ with its windows and sample photos.

Imports go one way: `peers` and `micro` use only the shared modules; `load` uses them and
`peers`; `scenarios` uses the shared modules and `load.loadtest` (tests/unit/bench/test_bench_imports.py
checks it).
"""
