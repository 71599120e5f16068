"""Datasets: synthetic shapes and COCO-format annotations."""
