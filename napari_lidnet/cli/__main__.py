"""``python -m napari_lidnet.cli``: the ``lidnet`` command line."""

import sys

from napari_lidnet.cli import main

sys.exit(main())
