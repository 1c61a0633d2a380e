"""napari-lidnet: lesion-inspired denoising and lesion detection for low-dose CT.

Importing this package is cheap: torch, napari and Qt are imported only by the modules that need them.
"""

__version__ = "0.1.0"
#: the npe2 plugin name (napari.yaml): napari's menus and dock titles use it
PLUGIN = "napari-lidnet"
