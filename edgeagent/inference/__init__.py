"""Inference: output contracts, prompts, the resident model and constrained decoding."""
