"""Block diagrams of Mask R-CNN whose tensor shapes are computed, not typed in.

:func:`architecture_shapes` follows one image size through the model described
by a :class:`~mrcnn_np.config.MaskRCNNConfig` -- the input transform (resize,
pad), the ResNet body, the FPN, the RPN, RoIAlign and the two heads -- with
the library's own size arithmetic (``anchors.torchvision_resized_size``,
``backbone.resnet_feature_shapes``, ``ops.conv.conv_output_size``). The three
drawings read every number they print from that dictionary, so a diagram drawn
for ``torchvision_config()`` and one drawn for ``shapes_config()`` differ
exactly where the two models differ:

* :func:`plot_overall_structure` -- the whole pipeline, image to masks;
* :func:`plot_fpn_schematic` -- bottom-up C2..C5, laterals, top-down merge, P2..P6;
* :func:`plot_rpn_head` -- the shared 3x3 conv and its two 1x1 outputs, level by level.

``tests/test_architecture.py`` checks the shapes against a real forward pass
of the shapes model and against the anchor arithmetic for the 800-px model.

Shape shorthand: N images; D FPN channels; A anchors per location; T anchors
of one image; R RoIs given to the box head (every proposal at test time); E
detections given to the mask head; K+1 classes with background. Shapes are
NCHW tuples with the batch dimension first, as the model's arrays have them.
"""
from __future__ import annotations

from .._checks import check_hw_pair, check_positive_int
from ..anchors import torchvision_resized_size
from ..backbone import resnet_feature_shapes
from ..config import MaskRCNNConfig
from ..fpn import PYRAMID_LEVELS
from ..ops.conv import conv_output_size

__all__ = [
    "LEVEL_MAPPER",
    "architecture_shapes",
    "shape_text",
    "model_name",
    "plot_overall_structure",
    "plot_fpn_schematic",
    "plot_rpn_head",
]

#: the FPN level an RoI is pooled from (torchvision ``LevelMapper``, k0 = 4, canonical size 224)
LEVEL_MAPPER = "k = ⌊4 + log₂(√(wh) / 224)⌋, clamped to 2..5"

_RPN_LEVELS = PYRAMID_LEVELS  # the RPN reads all five levels


def shape_text(shape):
    """A shape as the diagrams print it: ``(256, 200, 200)`` -> ``"256×200×200"``."""
    return "×".join(str(int(v)) for v in shape)


def _count(n):
    return f"{int(n):,}"


def model_name(config):
    """``"ResNet-50-FPN"`` style name of the config's backbone (width noted when not 64)."""
    depth = 3 * sum(config.backbone_layers) + 2
    name = f"ResNet-{depth}-FPN"
    if config.backbone_width != 64:
        name += f" (width {config.backbone_width})"
    return name


def architecture_shapes(config, image_hw, *, batch=1):
    """Shape of every tensor of inference for one image size, computed from a config.

    config: MaskRCNNConfig. image_hw: (H, W) of the input image before the
    transform. batch: N, images in the batch (all of size image_hw).
    Returns a dict, in forward order, of name -> shape tuple:

    * "image" (N, 3, H, W); "resized" (N, 3, h, w) after torchvision's resize
      (``min_size``/``max_size``); "batch" (N, 3, Hp, Wp) padded to ``size_divisible``;
    * "C2".."C5" (N, C_k, H_k, W_k), C_k = ``config.backbone_out_channels``,
      strides 4..32 (``resnet_feature_shapes``: the stride-2 layers round up);
    * "P2".."P5" (N, D, H_k, W_k) and "P6" (N, D, ceil(H_5/2), ceil(W_5/2))
      (max-pool, kernel 1, stride 2);
    * per RPN level k: "objectness.Pk" (N, A, H_k, W_k), "rpn_deltas.Pk"
      (N, 4A, H_k, W_k), "anchors.Pk" (A*H_k*W_k, 4); then "anchors" (T, 4),
      "objectness" (N, T), "rpn_deltas" (N, T, 4) after flattening;
    * "proposals" (N, K, 4), K the most proposals an image can keep:
      ``min(rpn_post_nms_top_n_test, sum_k min(rpn_pre_nms_top_n_test, A*H_k*W_k))``;
    * box branch, R = N*K RoIs: "box_roi_features" (R, D, 7, 7), "box_fc6"
      and "box_fc7" (R, representation_size), "class_logits" (R, K+1),
      "box_regression" (R, 4(K+1));
    * "detections" (E, 4), E = N * box_detections_per_img (at most);
    * mask branch: "mask_roi_features" (E, D, 14, 14), "mask_conv1".. (E, c_i, 14, 14)
      (one per ``mask_layers`` entry), "mask_deconv" (E, mask_dim_reduced, 28, 28),
      "mask_logits" (E, K+1, 28, 28), "masks" (E, 1, 28, 28) (the predicted
      class's map, before pasting into the image).

    Counts that depend on the data (proposals, detections) are their maxima.
    """
    if not isinstance(config, MaskRCNNConfig):
        raise TypeError(f"config must be a MaskRCNNConfig, got {type(config).__name__}")
    H, W = check_hw_pair("image_hw", image_hw)
    n = check_positive_int("batch", batch)
    h, w = torchvision_resized_size((H, W), config.min_size, config.max_size)
    d = config.size_divisible
    hp, wp = -(-h // d) * d, -(-w // d) * d
    s = {"image": (n, 3, H, W), "resized": (n, 3, h, w), "batch": (n, 3, hp, wp)}
    s.update(resnet_feature_shapes(s["batch"], layers=config.backbone_layers, width=config.backbone_width))
    D = config.fpn_channels
    for k in range(2, 6):
        s[f"P{k}"] = (n, D) + s[f"C{k}"][2:]
    h5, w5 = s["P5"][2:]
    s["P6"] = (n, D, conv_output_size(h5, 1, stride=2), conv_output_size(w5, 1, stride=2))

    A = config.num_anchors_per_location
    counts = []
    for name in _RPN_LEVELS:
        gh, gw = s[name][2:]
        s[f"objectness.{name}"] = (n, A, gh, gw)
        s[f"rpn_deltas.{name}"] = (n, 4 * A, gh, gw)
        s[f"anchors.{name}"] = (A * gh * gw, 4)
        counts.append(A * gh * gw)
    T = sum(counts)
    s["anchors"] = (T, 4)
    s["objectness"] = (n, T)
    s["rpn_deltas"] = (n, T, 4)
    per_image = min(config.rpn_post_nms_top_n_test,
                    sum(min(config.rpn_pre_nms_top_n_test, c) for c in counts))
    s["proposals"] = (n, per_image, 4)

    R, K1 = n * per_image, config.num_classes
    pb, pm = config.box_roi_output_size, config.mask_roi_output_size
    s["box_roi_features"] = (R, D, pb, pb)
    s["box_fc6"] = (R, config.representation_size)
    s["box_fc7"] = (R, config.representation_size)
    s["class_logits"] = (R, K1)
    s["box_regression"] = (R, 4 * K1)
    E = n * config.box_detections_per_img
    s["detections"] = (E, 4)
    s["mask_roi_features"] = (E, D, pm, pm)
    for i, c in enumerate(config.mask_layers):
        s[f"mask_conv{i + 1}"] = (E, c, pm, pm)
    s["mask_deconv"] = (E, config.mask_dim_reduced, 2 * pm, 2 * pm)
    s["mask_logits"] = (E, K1, 2 * pm, 2 * pm)
    s["masks"] = (E, 1, 2 * pm, 2 * pm)
    return s


# --------------------------------------------------------------------------- drawing helpers

_COLOURS = {
    "input": "#f0f0f0",
    "backbone": "#c6dbef",
    "fpn": "#c7e9c0",
    "rpn": "#fdd0a2",
    "roi": "#dadaeb",
    "box": "#fcbba1",
    "mask": "#d9f0d3",
    "merge": "#ffffff",
}


def _canvas(figsize, xlim, ylim):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, w, h, text, *, colour, fontsize=8, weight="normal", ec="0.35", family=None, ha="center"):
    """A rounded box with (x, y) its lower-left corner; returns its geometry."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.6",
                                fc=_COLOURS.get(colour, colour), ec=ec, lw=0.9))
    tx = x + w / 2 if ha == "center" else x + 0.8
    ax.text(tx, y + h / 2, text, ha=ha, va="center", fontsize=fontsize, weight=weight, family=family,
            linespacing=1.25)
    return {"x": x, "y": y, "w": w, "h": h, "l": x, "r": x + w, "b": y, "t": y + h,
            "cx": x + w / 2, "cy": y + h / 2}


def _arrow(ax, start, end, text=None, *, fontsize=7, colour="0.25", text_xy=None, ha="center", va="center",
           style="-|>", lw=1.0, ls="-", rotation=0, connection="arc3"):
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, color=colour, lw=lw, ls=ls, shrinkA=0, shrinkB=0,
                                connectionstyle=connection, mutation_scale=10))
    if text:
        if text_xy is None:
            text_xy = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        ax.text(*text_xy, text, ha=ha, va=va, fontsize=fontsize, color="0.15", rotation=rotation,
                bbox=dict(fc="white", ec="none", pad=0.5, alpha=0.9))


def _polyline_arrow(ax, points, *, colour="0.25", lw=1.0, ls="-"):
    xs, ys = zip(*points[:-1])
    ax.plot(xs, ys, color=colour, lw=lw, ls=ls, solid_capstyle="butt")
    _arrow(ax, points[-2], points[-1], colour=colour, lw=lw, ls=ls)


def _hw(shape):
    return f"{shape[-2]}×{shape[-1]}"


def _stride(s, name):
    return s["batch"][2] // s[name][2] if s["batch"][2] % s[name][2] == 0 else s["batch"][2] / s[name][2]


def _mask_convs_text(config):
    layers = config.mask_layers
    if len(set(layers)) == 1:
        return f"{len(layers)} × (3×3 conv {layers[0]} + ReLU)"
    return "3×3 convs " + ", ".join(str(c) for c in layers) + " (+ ReLU)"


# --------------------------------------------------------------------------- overall structure


def plot_overall_structure(config, image_hw, *, title=None):
    """The whole Mask R-CNN at inference, every box labelled with its computed shape.

    config: MaskRCNNConfig; image_hw: (H, W) of the input image.
    Columns, left to right: the input and its transform, the ResNet body
    (C2..C5), the FPN (P2..P6), the RPN (shared head, anchors, proposals),
    RoIAlign with the level mapper, then the box head and the mask head.
    Shapes drop the batch dimension of the feature maps (one image); RoI
    tensors keep their leading count. Returns the figure.
    """
    s = architecture_shapes(config, image_hw)
    A, K1 = config.num_anchors_per_location, config.num_classes
    fig, ax = _canvas((17, 9.6), (0, 100), (0, 66.5))
    if title is None:
        H, W = s["image"][2:]
        title = (f"Mask R-CNN, {model_name(config)}, {K1} classes (background included): "
                 f"one {H}×{W} image at inference — every shape computed by architecture_shapes()")
    ax.set_title(title, fontsize=11)
    for x, text in ((6, "input"), (22, f"backbone: {model_name(config).split(' ')[0][:-4]}"),
                    (41, f"FPN, D = {config.fpn_channels}"), (59, "RPN"), (85, "RoI heads")):
        ax.text(x, 65, text, ha="center", va="center", fontsize=10, weight="bold")

    # input column, top to bottom
    img = _box(ax, 0.5, 50, 11, 7, f"image\n{shape_text(s['image'][1:])}", colour="input", fontsize=8)
    tr = _box(ax, 0.5, 22, 11, 22,
              f"transform\n\nresize: short side\n→ {config.min_size}, long\nside ≤ {config.max_size}\n"
              f"→ {shape_text(s['resized'][1:])}\n\nnormalise (mean, std)\n\n"
              f"pad to a multiple\nof {config.size_divisible}",
              colour="input", fontsize=7.5)
    bt = _box(ax, 0.5, 2, 11, 8, f"batch\n{shape_text(s['batch'][1:])}", colour="input", fontsize=8)
    _arrow(ax, (img["cx"], img["b"]), (tr["cx"], tr["t"]))
    _arrow(ax, (tr["cx"], tr["b"]), (bt["cx"], bt["t"]))

    # backbone column: stem then C2..C5 stacked upwards, narrowing like a pyramid
    ys = {"C2": 13, "C3": 24, "C4": 35, "C5": 46}
    widths = {"C2": 15.5, "C3": 14.5, "C4": 13.5, "C5": 12.5}
    cx_b = 22
    stem = _box(ax, cx_b - 7.5, 2, 15, 8, f"stem: 7×7 conv s2, BN, ReLU,\n3×3 max-pool s2\n"
                f"→ {config.backbone_width}×{_hw(s['C2'])}", colour="backbone", fontsize=7.5)
    _arrow(ax, (bt["r"], bt["cy"]), (stem["l"], stem["cy"]))
    prev = stem
    cboxes = {}
    for i, name in enumerate(ys):
        wdt = widths[name]
        blocks = config.backbone_layers[i]
        cboxes[name] = b = _box(
            ax, cx_b - wdt / 2, ys[name], wdt, 7,
            f"{name}  {shape_text(s[name][1:])}\nlayer{i + 1} ({blocks} block{'s' if blocks > 1 else ''}),"
            f" stride {_stride(s, name)}", colour="backbone", fontsize=7.5)
        _arrow(ax, (cx_b, prev["t"]), (cx_b, b["b"]))
        prev = b

    # FPN column
    cx_f = 41
    pboxes = {}
    for name in ("C2", "C3", "C4", "C5"):
        p = "P" + name[1]
        wdt = widths[name] - 2.5
        pboxes[p] = b = _box(ax, cx_f - wdt / 2, ys[name], wdt, 7, f"{p}  {shape_text(s[p][1:])}",
                             colour="fpn", fontsize=8)
        _arrow(ax, (cboxes[name]["r"], cboxes[name]["cy"]), (b["l"], b["cy"]),
               "1×1" if name != "C2" else f"1×1 → {config.fpn_channels}", fontsize=6.5)
    pboxes["P6"] = p6 = _box(ax, cx_f - 4, 55, 8, 5, f"P6  {shape_text(s['P6'][1:])}", colour="fpn", fontsize=8)
    _arrow(ax, (cx_f, pboxes["P5"]["t"]), (cx_f, p6["b"]), "max-pool s2", fontsize=6.5,
           text_xy=(cx_f - 0.8, (pboxes["P5"]["t"] + p6["b"]) / 2), ha="right")
    for hi, lo in (("P5", "P4"), ("P4", "P3"), ("P3", "P2")):
        _arrow(ax, (pboxes[hi]["l"] + 1.2, pboxes[hi]["b"]), (pboxes[lo]["l"] + 1.2, pboxes[lo]["t"]),
               colour="#238b45")
    ax.text(cx_f, 8.2, "top-down: nearest ×2 up,\nadd the lateral,\nthen 3×3 conv per level",
            ha="center", va="center", fontsize=7, color="#238b45")

    # RPN column
    cx_r = 59
    head = _box(ax, cx_r - 7, 27, 14, 14,
                f"RPN head, shared\nby P2..P6\n\n3×3 conv {config.fpn_channels} + ReLU\n"
                f"1×1 → objectness {A}×h×w\n1×1 → deltas {4 * A}×h×w",
                colour="rpn", fontsize=7.5)
    for p in _RPN_LEVELS:
        b = pboxes[p]
        _arrow(ax, (b["r"], b["cy"]), (head["l"], head["b"] + 2 + 2.4 * _RPN_LEVELS.index(p)),
               colour="0.55", lw=0.8)
    anchor_lines = "\n".join(f"{p}: {A}×{_hw(s[p])} = {_count(s['anchors.' + p][0])}" for p in _RPN_LEVELS)
    anc = _box(ax, cx_r - 7, 2, 14, 20,
               f"anchors, {A} per cell\n(sizes {', '.join(str(v[0]) for v in config.anchor_sizes)})\n\n"
               f"{anchor_lines}\n\ntotal T = {_count(s['anchors'][0])}",
               colour="rpn", fontsize=7)
    _arrow(ax, (cx_r, anc["t"]), (cx_r, head["b"]), colour="0.45")
    prop = _box(ax, cx_r - 7, 46, 14, 12,
                f"decode deltas, keep top\n{config.rpn_pre_nms_top_n_test} per level, NMS {config.rpn_nms_thresh:g},\n"
                f"keep top {config.rpn_post_nms_top_n_test}\n\nproposals ≤ {shape_text(s['proposals'][1:])}",
                colour="rpn", fontsize=7.5)
    _arrow(ax, (cx_r, head["t"]), (cx_r, prop["b"]))

    # RoI column: RoIAlign on top, box branch (left) and mask branch (right) below
    roi = _box(ax, 70, 48, 29.5, 10,
               f"MultiScaleRoIAlign on P2..P5: each RoI is read from level\n{LEVEL_MAPPER}\n"
               f"(a 224×224 box → P4; 112×112 → P3)",
               colour="roi", fontsize=7.5)
    _arrow(ax, (prop["r"], prop["cy"] + 2), (roi["l"], prop["cy"] + 2),
           shape_text(s["proposals"][1:]), fontsize=6.5, text_xy=((prop["r"] + roi["l"]) / 2, prop["cy"] + 3.6))
    # the pyramid also feeds RoIAlign: a line over the top of the RPN column
    _polyline_arrow(ax, [(pboxes["P5"]["r"], pboxes["P5"]["cy"] + 1.5), (cx_f + 8.5, 61.5), (73, 61.5),
                         (73, roi["t"])], colour="#238b45", lw=0.9)
    ax.text(67.5, 62, "P2..P5", ha="center", va="bottom", fontsize=7, color="#238b45")

    R, E = s["box_roi_features"][0], s["mask_roi_features"][0]
    pb, pm = config.box_roi_output_size, config.mask_roi_output_size
    xb, xm, bw = 70, 85.5, 14
    box_chain = [
        (f"RoIAlign {pb}×{pb}, sampling {config.box_roi_sampling_ratio}\n{shape_text(s['box_roi_features'])}", 6.5),
        (f"fc6 + ReLU\n{shape_text(s['box_fc6'])}", 5.5),
        (f"fc7 + ReLU\n{shape_text(s['box_fc7'])}", 5.5),
        (f"cls_score {shape_text(s['class_logits'])}\nbbox_pred {shape_text(s['box_regression'])}", 6.5),
        (f"score > {config.box_score_thresh:g}, per-class\nNMS {config.box_nms_thresh:g}, top "
         f"{config.box_detections_per_img}\n→ detections ≤ {shape_text(s['detections'])}", 8),
    ]
    mask_chain = [
        (f"RoIAlign {pm}×{pm}, sampling {config.mask_roi_sampling_ratio}\n"
         f"{shape_text(s['mask_roi_features'])}", 6.5),
        (f"{_mask_convs_text(config)}\n{shape_text(s[f'mask_conv{len(config.mask_layers)}'])}", 5.5),
        (f"2×2 transposed conv s2 + ReLU\n{shape_text(s['mask_deconv'])}", 5.5),
        (f"1×1 conv, one map per class\n{shape_text(s['mask_logits'])}", 6.5),
        (f"sigmoid of the predicted\nclass's map {shape_text(s['masks'])},\npasted into the image", 8),
    ]
    top = roi["b"] - 2.5
    gap = 1.6
    chains = {}
    for key, x, chain, colour in (("box", xb, box_chain, "box"), ("mask", xm, mask_chain, "mask")):
        y = top
        boxes = []
        for text, h in chain:
            b = _box(ax, x, y - h, bw, h, text, colour=colour, fontsize=7)
            if boxes:
                _arrow(ax, (b["cx"], boxes[-1]["b"]), (b["cx"], b["t"]))
            boxes.append(b)
            y -= h + gap
        chains[key] = boxes
    _arrow(ax, (xb + bw / 2, roi["b"]), (xb + bw / 2, chains["box"][0]["t"]), f"R = {R} RoIs", fontsize=6.5,
           text_xy=(xb + bw / 2 + 0.6, (roi["b"] + chains["box"][0]["t"]) / 2), ha="left")
    _arrow(ax, (xm + bw / 2, roi["b"]), (xm + bw / 2, chains["mask"][0]["t"]), f"E = {E} boxes", fontsize=6.5,
           text_xy=(xm + bw / 2 + 0.6, (roi["b"] + chains["mask"][0]["t"]) / 2), ha="left")
    det = chains["box"][-1]
    _polyline_arrow(ax, [(det["r"], det["cy"]), (xm - 0.75, det["cy"]), (xm - 0.75, roi["b"] - 0.6),
                         (xm + 3, roi["b"] - 0.6), (xm + 3, chains["mask"][0]["t"])], colour="#cb181d", lw=0.9)
    ax.text(det["r"] + 0.2, det["cy"] - 1.6, "detected boxes\n→ mask RoIAlign", fontsize=6, color="#cb181d",
            ha="left", va="top")
    return fig


# --------------------------------------------------------------------------- FPN


def plot_fpn_schematic(config, image_hw, *, title=None):
    """The FPN of ``fpn.fpn_forward``, drawn with the shapes of this config and image size.

    Left, bottom-up: C2..C5 from the ResNet body. Middle: each lateral 1x1
    convolution brings C_k to D channels; the merged map M_k is the lateral plus
    M_{k+1} upsampled (nearest neighbour) to its size. Right: a 3x3 convolution
    (padding 1) turns M_k into P_k; P6 is a max-pool (kernel 1, stride 2) of
    P5, which only the RPN reads. Returns the figure.
    """
    s = architecture_shapes(config, image_hw)
    D = config.fpn_channels
    fig, ax = _canvas((13, 8.6), (0, 100), (0, 68))
    if title is None:
        H, W = s["image"][2:]
        title = (f"FPN of {model_name(config)}: a {H}×{W} image, resized and padded to "
                 f"{_hw(s['batch'])} (shapes C×H×W, computed)")
    ax.set_title(title, fontsize=11)
    for x, text in ((14, "bottom-up (ResNet body)"), (50, "lateral 1×1 + top-down merge"),
                    (84, "output: 3×3 conv per level")):
        ax.text(x, 65.5, text, ha="center", va="center", fontsize=10, weight="bold")
    ys = {2: 6, 3: 19, 4: 32, 5: 45}
    width = {2: 20, 3: 18.5, 4: 17, 5: 15.5}
    cboxes, mnodes, pboxes = {}, {}, {}
    cx_c, cx_m, cx_p = 14, 54, 84
    img = _box(ax, 1, 0.3, 9, 3.2, f"batch {_hw(s['batch'])}", colour="input", fontsize=7)
    for k in range(2, 6):
        ck, pk = f"C{k}", f"P{k}"
        cboxes[k] = c = _box(ax, cx_c - width[k] / 2, ys[k], width[k], 8,
                             f"{ck}   {shape_text(s[ck][1:])}\nstride {_stride(s, ck)}", colour="backbone",
                             fontsize=8.5)
        m = _box(ax, cx_m - 8, ys[k] + 1, 16, 6, f"M{k}\n{D}×{_hw(s[pk])}", colour="merge", fontsize=8)
        mnodes[k] = m
        _arrow(ax, (c["r"], c["cy"]), (m["l"], m["cy"]),
               f"1×1 conv\n{s[ck][1]} → {D}", fontsize=7, text_xy=((c["r"] + m["l"]) / 2, c["cy"] + 2.4))
        pboxes[k] = p = _box(ax, cx_p - (width[k] - 2) / 2, ys[k], width[k] - 2, 8,
                             f"{pk}   {shape_text(s[pk][1:])}", colour="fpn", fontsize=8.5)
        _arrow(ax, (m["r"], m["cy"]), (p["l"], p["cy"]), "3×3 conv\npad 1", fontsize=7,
               text_xy=((m["r"] + p["l"]) / 2, m["cy"] + 2.4))
        if k > 2:
            _arrow(ax, (cx_c, cboxes[k - 1]["t"]), (cx_c, c["b"]), f"layer{k - 1}", fontsize=7,
                   text_xy=(cx_c + 0.8, (cboxes[k - 1]["t"] + c["b"]) / 2), ha="left")
    _arrow(ax, (img["r"], img["cy"]), (cx_c, cboxes[2]["b"]), connection="angle3,angleA=0,angleB=90")
    ax.text(cx_c + 0.8, 4.2, "stem + layer1", fontsize=7, ha="left", va="center")
    # top-down path: M_{k+1} -> nearest upsample -> + lateral
    for k in (5, 4, 3):
        hi, lo = mnodes[k], mnodes[k - 1]
        up = f"nearest up\n{_hw(s[f'P{k}'])} → {_hw(s[f'P{k - 1}'])}"
        _arrow(ax, (hi["cx"], hi["b"]), (lo["cx"], lo["t"]), up, colour="#238b45", fontsize=7,
               text_xy=(hi["cx"] + 0.8, (hi["b"] + lo["t"]) / 2), ha="left")
        ax.text(lo["l"] - 0.6, lo["t"] - 0.2, "+", fontsize=13, color="#238b45", ha="right", va="bottom",
                weight="bold")
    ax.text(cx_m, 56.5, f"M5 = lateral of C5; M$_k$ = lateral of C$_k$ + up(M$_{{k+1}}$)\n"
            "(each coarse cell copied into the cells that map onto it)",
            ha="center", va="center", fontsize=7.5, color="#238b45")
    p6 = _box(ax, cx_p - 7.5, 56.5, 15, 7, f"P6   {shape_text(s['P6'][1:])}\n(read by the RPN only)",
              colour="fpn", fontsize=8.5)
    _arrow(ax, (cx_p, pboxes[5]["t"]), (cx_p, p6["b"]), "max-pool, kernel 1, stride 2", fontsize=7,
           text_xy=(cx_p + 0.8, (pboxes[5]["t"] + p6["b"]) / 2), ha="left")
    ax.text(cx_p, 2.2, "P2..P6 → RPN;  P2..P5 → RoIAlign", fontsize=8, ha="center", va="center",
            style="italic")
    return fig


# --------------------------------------------------------------------------- RPN head


def plot_rpn_head(config, image_hw, *, title=None):
    """The RPN head of ``rpn.rpn_head_forward`` and its output shapes on every level.

    Left: one level's map (D×h×w) through the 3x3 convolution + ReLU, then the
    two 1x1 convolutions: A objectness logits and 4A box deltas per cell. The
    same weights run on P2..P6. Right: a table of each level's grid, output
    shapes and anchor count (A*h*w), with the total. Returns the figure.
    """
    s = architecture_shapes(config, image_hw)
    D, A = config.fpn_channels, config.num_anchors_per_location
    fig, ax = _canvas((14, 5.6), (0, 100), (0, 40))
    if title is None:
        H, W = s["image"][2:]
        title = (f"RPN head of {model_name(config)}, one set of weights for P2..P6 "
                 f"({H}×{W} image → batch {_hw(s['batch'])}; shapes computed)")
    ax.set_title(title, fontsize=11)
    x_in = _box(ax, 0.5, 15, 9, 10, f"P$_k$\n{D}×h×w\n(any level)", colour="fpn", fontsize=8.5)
    conv = _box(ax, 13, 14, 13, 12, f"3×3 conv, pad 1\n{D} → {D}\n+ ReLU\n\nrpn.head.conv.0.0\n"
                f"weight {shape_text((D, D, 3, 3))}", colour="rpn", fontsize=7.5)
    _arrow(ax, (x_in["r"], x_in["cy"]), (conv["l"], conv["cy"]))
    cls = _box(ax, 31, 27, 13.5, 10, f"1×1 conv {D} → {A}\nrpn.head.cls_logits\nweight {shape_text((A, D, 1, 1))}",
               colour="rpn", fontsize=7.5)
    reg = _box(ax, 31, 3, 13.5, 10, f"1×1 conv {D} → {4 * A}\nrpn.head.bbox_pred\n"
               f"weight {shape_text((4 * A, D, 1, 1))}", colour="rpn", fontsize=7.5)
    _arrow(ax, (conv["r"], conv["cy"]), (cls["l"], cls["cy"]), f"{D}×h×w", fontsize=7,
           text_xy=(conv["r"] + 3.2, conv["cy"] + 4.5))
    _arrow(ax, (conv["r"], conv["cy"]), (reg["l"], reg["cy"]))
    obj = _box(ax, 47.5, 28, 11.5, 8, f"objectness\n{A}×h×w\none logit per anchor", colour="input", fontsize=7.5)
    dlt = _box(ax, 47.5, 4, 11.5, 8, f"deltas\n{4 * A}×h×w\n(dx, dy, dw, dh) × {A}", colour="input", fontsize=7.5)
    _arrow(ax, (cls["r"], cls["cy"]), (obj["l"], obj["cy"]))
    _arrow(ax, (reg["r"], reg["cy"]), (dlt["l"], dlt["cy"]))
    ax.text(53.25, 20, f"channel a ↔ anchor a of the cell\nchannels 4a..4a+3 ↔ its box", ha="center",
            va="center", fontsize=7, color="0.3")
    # per-level table
    rows = [("level", "h×w", "objectness", "deltas", "anchors")]
    for p in _RPN_LEVELS:
        rows.append((p, _hw(s[p]), shape_text(s[f"objectness.{p}"][1:]), shape_text(s[f"rpn_deltas.{p}"][1:]),
                     _count(s[f"anchors.{p}"][0])))
    rows.append(("total", "", "", "", _count(s["anchors"][0])))
    cols_x = (63, 68, 75.5, 84, 99.5)
    aligns = ("left", "left", "left", "left", "right")
    for i, row in enumerate(rows):
        y = 34 - 4.4 * i
        for x, text, ha in zip(cols_x, row, aligns):
            ax.text(x, y, text, ha=ha, va="center", fontsize=8, weight="bold" if i in (0, len(rows) - 1) else None,
                    family="DejaVu Sans Mono" if i and x > 64 else None)
        if i in (0, len(rows) - 2):
            ax.plot([63, 99.8], [y - 2.2, y - 2.2], color="0.5", lw=0.6)
    ax.text(81.5, 34 - 4.4 * len(rows) - 0.4, f"anchors per level = {A} × h × w", ha="center", va="center",
            fontsize=7.5, color="0.3")
    return fig
