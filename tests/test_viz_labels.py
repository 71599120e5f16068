"""Detection labels: none overlaps another, none leaves the image (viz.evaluation.place_box_labels)."""
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mrcnn_np.viz.evaluation import place_box_labels, plot_detections  # noqa: E402


def _extents(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def _draw_image_axes(boxes, texts):
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.zeros((128, 128, 3)), extent=(0, 128, 128, 0))
    ax.set_xlim(0, 128)
    ax.set_ylim(128, 0)
    return fig, ax, place_box_labels(ax, boxes, texts, color="C1")


def test_labels_of_stacked_boxes_do_not_overlap():
    # four detections of one object (the "tritriangle" case): same corner, four labels
    boxes = np.array([[30, 40, 90, 100], [31, 41, 89, 99], [30, 42, 91, 100], [29, 40, 90, 98.]])
    fig, _, artists = _draw_image_axes(boxes, ["triangle 0.99", "circle 0.58", "square 0.51", "triangle 0.50"])
    ext = _extents(fig, artists)
    for a, b in itertools.combinations(ext, 2):
        assert not a.overlaps(b), (a, b)
    plt.close(fig)


def test_labels_stay_inside_the_image():
    # boxes touching every border: a label above the top edge or right of the right edge would be cut
    boxes = np.array([[0, 0, 40, 30], [100, 0, 128, 20], [0, 110, 30, 128], [110, 100, 128, 128.]])
    fig, ax, artists = _draw_image_axes(boxes, ["square 1.00", "circle 0.97", "triangle 0.96", "square 0.95"])
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    for e in _extents(fig, artists):
        assert frame.x0 - 0.5 <= e.x0 and e.x1 <= frame.x1 + 0.5, (e, frame)
        assert frame.y0 - 0.5 <= e.y0 and e.y1 <= frame.y1 + 0.5, (e, frame)
    plt.close(fig)


def test_plot_detections_labels_only_shown_detections():
    det = {"boxes": np.array([[10, 10, 50, 50], [12, 12, 48, 48.]]), "labels": np.array([1, 2]),
           "scores": np.array([0.9, 0.2])}
    fig, ax = plot_detections(np.zeros((64, 64, 3)), {"boxes": [], "labels": []}, det,
                              class_names=("bg", "square", "circle"), min_score=0.5, legend=False)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["square 0.90"]
    plt.close(fig)
