"""Triton Python-backend model sources; export copies each to `<model>/1/model.py`."""
