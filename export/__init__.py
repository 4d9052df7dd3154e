"""Checkpoint -> ONNX -> Triton model repository, with a parity check against PyTorch."""
