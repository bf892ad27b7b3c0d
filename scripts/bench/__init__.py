"""Benchmarks, by kind:

- `load/`: the open-loop load generator (`loadtest`) and the side-by-side served benchmark behind
  `make bench` (`main` and the modules it uses: services, artifacts, levers, peer, inproc, report);
- `micro/`: no server: the forward pass, one request's cost, crafted images, the GPU and
  large-model runs;
- `scenarios/`: reliability and slow-client runs that write RELIABILITY.md.

`stats` is the one definition of a percentile every report uses; `workspace` is build/bench/.
"""
