"""Benchmarks: the Triton ensemble, the proxy and raw onnxruntime vs the tools users would pick instead."""
