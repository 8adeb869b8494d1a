"""What a run costs besides time: multiply-accumulates per image (checked by hand) and peak memory."""
import sys

import pytest
import torch

from cnn_depth.run import PeakMemory, macs_per_image


def config(arch, depth, n_in=3, n_out=10, size=(32, 32)):
    return dict(arch=arch, depth=depth, n_in=n_in, n_out=n_out, img_size=list(size))


def conv(c_in, c_out, h, w, k=3):
    """MACs of a conv layer: every output element sums c_in × k × k products."""
    return c_out * h * w * c_in * k * k


def test_macs_of_the_depth_family_by_hand():
    stem = conv(3, 16, 32, 32)  # 442,368: 3×3 conv, padding 1, full 32×32 resolution
    assert macs_per_image(config("bn", 1)) == stem + 16 * 10  # + the linear head, 16 -> 10
    stage1 = conv(16, 32, 16, 16)  # stride 2: a 16×16 output
    assert macs_per_image(config("bn", 2)) == stem + stage1 + 32 * 10 == 1_622_336
    stage2 = conv(32, 64, 8, 8)
    assert macs_per_image(config("bn", 3)) == stem + stage1 + stage2 + 64 * 10 == 2_802_304
    # plain has conv biases, bn has batch norm: neither is a multiply-accumulate of the convolution
    assert macs_per_image(config("plain", 3)) == macs_per_image(config("bn", 3))
    # residual depth 2: a one-conv block with a 1×1 stride-2 projection shortcut, 16 -> 32 at 16×16
    assert macs_per_image(config("residual", 2)) == 1_622_336 + conv(16, 32, 16, 16, k=1)
    # grayscale 28×28 (MNIST): the stem sees 1 channel; stride 2 maps 28 -> 14
    assert macs_per_image(config("bn", 2, n_in=1, size=(28, 28))) == \
        conv(1, 16, 28, 28) + conv(16, 32, 14, 14) + 32 * 10


@pytest.mark.skipif(sys.platform != "linux", reason="the per-run reset of the peak needs Linux's /proc")
def test_peak_memory_is_reset_per_run_and_sees_what_the_run_holds():
    m = PeakMemory(torch.device("cpu")).start()
    base = m.mib()
    x = torch.ones(200 * 2**20 // 4)  # 200 MiB, written to, so resident
    held = m.mib()
    del x
    assert held - base >= 190
    assert m.start().mib() < held - 150  # a new run starts from what the process holds now
