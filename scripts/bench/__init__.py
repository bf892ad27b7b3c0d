"""Benchmarks: the open-loop load generator (loadtest), the side-by-side benchmark behind
`make bench` (main and the modules it uses), and the large-model benchmark (large_model)."""
