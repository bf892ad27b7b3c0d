"""Micro-benchmarks without a server: forward pass, request cost, crafted images, GPU, large model."""
