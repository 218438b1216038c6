"""im2col / col2im for convolution as a matrix product.

Shapes: image (C, H, W); columns (C*KH*KW, OH*OW) with rows ordered (channel, ky, kx) as Darknet's weights.
Output pixel (oy, ox) reads input row oy*stride_y - pad + ky*dilation (zero outside the image).
"""
from __future__ import annotations

import numpy as np

from numba import prange

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


@jit(parallel=True)
def im2col_batch(images, ksize, stride_y, stride_x, pad, dilation, out_h, out_w, columns):
    """images (B, C, H, W) -> columns (C*K*K, B*OH*OW): image b's patch columns at [b*OH*OW, (b+1)*OH*OW),
    so one matrix product covers the whole batch."""
    batch, channels, height, width = images.shape
    spatial = out_h * out_w
    for task in prange(batch * channels):
        b = task // channels
        c = task - b * channels
        for ky in range(ksize):
            for kx in range(ksize):
                row = (c * ksize + ky) * ksize + kx
                dy = ky * dilation - pad
                dx = kx * dilation - pad
                for oy in range(out_h):
                    iy = oy * stride_y + dy
                    base = b * spatial + oy * out_w
                    if iy < 0 or iy >= height:
                        for ox in range(out_w):
                            columns[row, base + ox] = 0.0
                        continue
                    for ox in range(out_w):
                        ix = ox * stride_x + dx
                        if 0 <= ix < width:
                            columns[row, base + ox] = images[b, c, iy, ix]
                        else:
                            columns[row, base + ox] = 0.0


@jit(parallel=True)
def col2im_batch_add(columns, ksize, stride_y, stride_x, pad, dilation, out_h, out_w, images):
    """images (B, C, H, W) += the adjoint of im2col_batch; each (b, c) plane is owned by one task."""
    batch, channels, height, width = images.shape
    spatial = out_h * out_w
    for task in prange(batch * channels):
        b = task // channels
        c = task - b * channels
        for ky in range(ksize):
            for kx in range(ksize):
                row = (c * ksize + ky) * ksize + kx
                dy = ky * dilation - pad
                dx = kx * dilation - pad
                for oy in range(out_h):
                    iy = oy * stride_y + dy
                    if iy < 0 or iy >= height:
                        continue
                    base = b * spatial + oy * out_w
                    for ox in range(out_w):
                        ix = ox * stride_x + dx
                        if 0 <= ix < width:
                            images[b, c, iy, ix] += columns[row, base + ox]


@jit(parallel=True)
def batch_to_channel_major(x, out):
    """(B, C, S) -> (C, B*S) copy, for 1x1 convolutions over a batch."""
    batch, channels, spatial = x.shape
    for c in prange(channels):
        for b in range(batch):
            for s in range(spatial):
                out[c, b * spatial + s] = x[b, c, s]


@jit(parallel=True)
def channel_major_to_batch(x, out):
    """(C, B*S) -> (B, C, S) copy."""
    batch, channels, spatial = out.shape
    for bc in prange(batch * channels):
        b = bc // channels
        c = bc - b * channels
        for s in range(spatial):
            out[b, c, s] = x[c, b * spatial + s]


@jit(parallel=True)
def channel_major_to_batch_add(x, out):
    """out (B, C, S) += x (C, B*S)."""
    batch, channels, spatial = out.shape
    for bc in prange(batch * channels):
        b = bc // channels
        c = bc - b * channels
        for s in range(spatial):
            out[b, c, s] += x[c, b * spatial + s]
