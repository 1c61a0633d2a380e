"""LIDnet training: losses, datasets, the collaborative trainer."""
