"""Served load: the load generator and the side-by-side benchmark of `make bench`."""
