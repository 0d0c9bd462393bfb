"""Infrastructure a reader may skip: it makes the pipeline robust and fast, not different.

Downloads with resume and safe unzipping (``download.py``), build stamps that let ``process_coco.py``
redo only what changed (``stamps.py``), atomic file writes (``fileio.py``), images kept in GPU memory
for MAE (``device_loader.py``) and ``torch.compile`` settings (``compile.py``).
"""
