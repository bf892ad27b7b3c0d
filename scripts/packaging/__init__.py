"""Packaging: checkpoint -> exported model validated against the eager model -> staged files ->
provenance manifest -> reproducible .mar (`package.py` is the entry point). Architecture code
used at export lives in `architectures/`; nothing here ships in the worker."""
