"""Denoisers, lesion detector, ROI align, weights files and the model registry (torch)."""
