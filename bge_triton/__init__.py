"""bge-triton: BGE text embeddings served through a Triton Inference Server ensemble."""

__version__ = "0.1.0"
