"""Phantoms with lesions and projection-domain low-dose simulation."""
