"""Evaluation metrics (LPIPS perceptual distance, ...)."""
