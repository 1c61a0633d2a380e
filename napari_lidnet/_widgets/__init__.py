"""napari dock widgets (the only place besides _reader/_sample_data that imports Qt)."""
