"""im2col / col2im for convolution as a matrix product.

Shapes: image (C, H, W); columns (C*KH*KW, OH*OW) with rows ordered (channel, ky, kx) as Darknet's weights.
Output pixel (oy, ox) reads input row oy*stride_y - pad + ky*dilation (zero outside the image).
"""
from __future__ import annotations

import numpy as np

from . import jit


@jit
def im2col(image, ksize, stride_y, stride_x, pad, dilation, out_h, out_w, columns):
    channels, height, width = image.shape
    for c in range(channels):
        for ky in range(ksize):
            for kx in range(ksize):
                row = (c * ksize + ky) * ksize + kx
                dy = ky * dilation - pad
                dx = kx * dilation - pad
                for oy in range(out_h):
                    iy = oy * stride_y + dy
                    base = oy * out_w
                    if iy < 0 or iy >= height:
                        for ox in range(out_w):
                            columns[row, base + ox] = 0.0
                        continue
                    for ox in range(out_w):
                        ix = ox * stride_x + dx
                        if 0 <= ix < width:
                            columns[row, base + ox] = image[c, iy, ix]
                        else:
                            columns[row, base + ox] = 0.0


@jit
def col2im_add(columns, ksize, stride_y, stride_x, pad, dilation, out_h, out_w, image):
    """image += the scatter of `columns` back onto the pixels they were read from (adjoint of im2col)."""
    channels, height, width = image.shape
    for c in range(channels):
        for ky in range(ksize):
            for kx in range(ksize):
                row = (c * ksize + ky) * ksize + kx
                dy = ky * dilation - pad
                dx = kx * dilation - pad
                for oy in range(out_h):
                    iy = oy * stride_y + dy
                    if iy < 0 or iy >= height:
                        continue
                    base = oy * out_w
                    for ox in range(out_w):
                        ix = ox * stride_x + dx
                        if 0 <= ix < width:
                            image[c, iy, ix] += columns[row, base + ox]


def conv_output_size(size: int, ksize: int, stride: int, pad: int, dilation: int = 1) -> int:
    """(W - F_eff + 2P) // S + 1 with the dilated kernel extent; C division as Darknet (inputs are >= 0)."""
    extent = dilation * (ksize - 1) + 1
    return (size + 2 * pad - extent) // stride + 1
