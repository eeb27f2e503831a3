"""Training figures: conditioning labels back to seg values, the loss curve."""

from __future__ import annotations

import numpy as np

from components.synthesis.data import HEAD, condition_channels
from components.synthesis.figures import labels_to_seg, plot_loss
from data_catalog import load_label_scheme


def test_labels_go_back_to_the_seg_values_of_the_scheme():
    scheme = load_label_scheme("brats2023")
    channels = condition_channels(scheme)  # seg value -> conditioning channel
    seg = np.zeros((4, 4, 4), np.uint8)
    for i, value in enumerate(sorted(channels)):
        seg[i] = value
    labels = np.zeros(seg.shape, np.int64)
    for value, channel in channels.items():
        labels[seg == value] = channel
    labels[3, :2] = HEAD  # healthy head and background are both seg 0
    np.testing.assert_array_equal(labels_to_seg(labels, scheme), seg)


def test_loss_plot_is_a_png_and_nothing_without_rows(tmp_path):
    assert plot_loss([], tmp_path / "none.png", "empty") is None and not (tmp_path / "none.png").exists()
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "elapsed_s": float(s)} for s in range(1, 41)]
    out = plot_loss(rows, tmp_path / "loss.png", "a title")
    assert out == tmp_path / "loss.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
