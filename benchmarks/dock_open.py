"""How long opening the Denoise dock holds napari's GUI thread in a fresh process (torch not yet imported): the
device list's GPUs are listed once a run has loaded torch (importing it on the GUI thread held it 1-5 s).

    xvfb-run -a env PYTHONPATH=. .venv/bin/python benchmarks/dock_open.py
"""

from __future__ import annotations

import time


def main() -> dict:
    import napari

    viewer = napari.Viewer(show=False)
    t0 = time.perf_counter()
    from napari_lidnet._widgets.denoise_detect import DenoiseDetectWidget

    widget = DenoiseDetectWidget(viewer)
    held = time.perf_counter() - t0
    devices = [widget.device_combo.itemText(i) for i in range(widget.device_combo.count())]
    result = {"seconds": round(held, 3), "devices_at_once": devices}
    print(result)
    viewer.close()
    return result


if __name__ == "__main__":
    main()
