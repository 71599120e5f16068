"""Matplotlib figures for the notebooks and ``python -m mrcnn_np figures``.

One module per chapter (``viz.anchors``, ``viz.roi_align``, ...) so each stays
small; nothing in the library imports ``viz``.
"""
