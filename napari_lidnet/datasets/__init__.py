"""Training archives above ``sim``: slice manifests whose slices may get a simulated low-dose partner on read."""
