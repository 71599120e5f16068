"""mrcnn_np: Mask R-CNN in plain NumPy, every stage a forward/backward pair.

See README.md for the chapter map and DESIGN notes for conventions.
"""
__version__ = "0.1.0"
