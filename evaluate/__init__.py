"""Evaluation: what the paper measures (fidelity, scale equivariance, kNN, zero-shot, pictures)."""
