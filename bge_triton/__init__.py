"""bge-triton: BGE text embeddings served through a Triton Inference Server ensemble."""

import os

from .grpc_runtime import prefer_caller_reads

__version__ = "0.1.0"

prefer_caller_reads(os.environ)  # before anything imports grpc (grpc_runtime.py says why)
