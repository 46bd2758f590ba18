"""Make ``docs/napari_widget.png``: the Predict cells widget with a run's cells over an image.

Needs the napari extra with a Qt backend, celltune installed (so napari finds the plugin) and
a display with OpenGL; headless, use a virtual X server::

    xvfb-run -a -s "-screen 0 1400x900x24" env QT_QPA_PLATFORM=xcb \\
        python docs/make_napari_screenshot.py runs/unet docs/napari_widget.png

The image is the run's first test image (any image with ``--image PATH``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

from celltune.io import read_image
from celltune.rundir import RunDir

WINDOW = (1180, 720)


def _wait(condition, seconds: float = 600.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("prediction did not finish in time")
        QApplication.processEvents()
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    path = args.image or RunDir(args.run).read_splits().test[0].image
    image = read_image(path)
    image = image[..., 0] if image.shape[-1] == 1 else image

    viewer = napari.Viewer(title="celltune in napari")
    viewer.window.resize(*WINDOW)
    viewer.add_image(image, name=Path(path).stem)
    _, widget = viewer.window.add_plugin_dock_widget("celltune", "Predict cells")
    widget.source.setText(str(args.run))
    widget.predict_button.click()
    _wait(lambda: widget.predict_button.isEnabled() and f"{Path(path).stem} cells" in viewer.layers)
    viewer.layers[f"{Path(path).stem} probability"].visible = False
    viewer.layers[f"{Path(path).stem} cells"].opacity = 0.45
    viewer.layers.selection.active = viewer.layers[f"{Path(path).stem} cells"]
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    picture = Image.fromarray(np.asarray(shot)[..., :3]).quantize(colors=128)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(f"{args.out}: {picture.size[0]}x{picture.size[1]}, {args.out.stat().st_size // 1024} KB")
    viewer.close()


if __name__ == "__main__":
    main()
