"""Build: checkpoint -> exported model validated against the eager model -> staged files ->
provenance manifest -> reproducible .mar (package.py is the entry point)."""
