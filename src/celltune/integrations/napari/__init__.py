"""napari plugin: predict a layer with a run or package, open run folders, synthetic samples.

The plugin is declared in ``napari.yaml`` beside this file (an npe2 manifest, found through
the ``napari.manifest`` entry point) and needs the optional extra
``pip install "celltune[napari]"`` plus a Qt backend of your choice (e.g. ``pyqt5``).

* :mod:`.widget`: the "Predict cells" dock widget (Qt; prediction in a worker thread).
* :mod:`.reader`: opens a celltune run folder (``napari runs/unet``) with its test images.
* :mod:`.sample`: a synthetic microscopy image and its labels (File > Open Sample).
* :mod:`.layers`: the Qt-free part: loading a model, turning results into layer data.

Nothing is imported here, so ``import celltune`` never imports napari or Qt.
"""
from __future__ import annotations

import importlib
import sys


def _import_torch_without_triton() -> None:
    """Import celltune's torch stack with Triton hidden, when napari runs and torch is not
    yet imported.

    Triton's compiler library crashes the process (segmentation fault) when it is loaded
    after an OpenGL context of Mesa's LLVM-based drivers is current, which is the state
    napari is in once its canvas exists; torchvision imports it through ``torch._dynamo``.
    Prediction here never compiles, so torch is told Triton is absent (it caches that
    answer) and Triton stays importable for anyone who asks later.
    """
    if "napari" not in sys.modules or "torch" in sys.modules or "triton" in sys.modules:
        return
    sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError
    try:
        importlib.import_module("celltune.inference.predict")
    finally:
        del sys.modules["triton"]


_import_torch_without_triton()
