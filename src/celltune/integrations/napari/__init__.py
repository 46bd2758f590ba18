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
