"""Helpers shared by the tests: image builders (images) and TorchServe servers (servers)."""
