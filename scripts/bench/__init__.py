"""Benchmarks, by kind:

- `load/`: the open-loop load generator (`loadtest`) and the side-by-side served benchmark behind
  `make bench` (`main` and the modules it uses: services, artifacts, levers, peer, inproc, report);
- `micro/`: no server: the forward pass, one request's cost, crafted images, the GPU and
  large-model runs;
- `scenarios/`: reliability and slow-client runs that write RELIABILITY.md.

Shared by all three: `stats`, the one definition of a percentile (and median) every report
uses; `markdown`, rewriting a generated section of BENCHMARKS.md or RELIABILITY.md; `workspace`,
build/bench/ with its windows and sample photos.

Imports go one way: `load` uses the shared modules; `scenarios` uses them and `load.loadtest`;
`micro` uses only the shared modules (tests/unit/bench/test_bench_imports.py checks it).
"""
