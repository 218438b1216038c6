"""Darknet's image geometry kernels (spec §7.4–7.6) over planar float32 images of shape (C, H, W).

Every function that resamples goes through `_resample_region`, Darknet's `resize_image` generalised to
read a source rectangle and write a destination rectangle, so letterboxing and centre cropping need no
temporary crops or pasted copies. All interpolation arithmetic is float32, one rounding per C operation,
because Darknet's output (including its almost-black last row for some sizes) depends on it.
"""
from __future__ import annotations

import numpy as np

from darknetpy.kernels import jit


@jit
def _resample_region(src, src_x, src_y, src_w, src_h, dst, dst_x, dst_y, out_w, out_h):
    """Bilinear "align corners" resize of src[:, src_y:+src_h, src_x:+src_w] into dst[:, dst_y:+out_h, dst_x:+out_w].

    Pass 1 resamples columns into an intermediate of src_h rows; pass 2 resamples rows. The last output
    column copies the last source column; the last output row only takes the (1 - dy) term, which is
    what makes Darknet's bottom row nearly black when (out_h - 1) * h_scale rounds below src_h - 1.
    """
    if out_w <= 0 or out_h <= 0:
        return
    channels = src.shape[0]
    one = np.float32(1.0)
    # Darknet divides by zero here when out_w or out_h is 1; the column case never reads the scale,
    # the row case is undefined behaviour in C, so we read source row 0.
    w_scale = np.float32(0.0)
    if out_w > 1:
        w_scale = np.float32(src_w - 1) / np.float32(out_w - 1)
    h_scale = np.float32(0.0)
    if out_h > 1:
        h_scale = np.float32(src_h - 1) / np.float32(out_h - 1)

    left = np.empty(out_w, np.int64)
    right = np.empty(out_w, np.int64)
    frac_x = np.empty(out_w, np.float32)
    copies_last = np.empty(out_w, np.bool_)
    for c in range(out_w):
        copies_last[c] = c == out_w - 1 or src_w == 1
        sx = np.float32(c) * w_scale
        ix = min(int(sx), src_w - 1)
        left[c] = ix
        right[c] = min(ix + 1, src_w - 1)
        frac_x[c] = sx - np.float32(ix)

    mid = np.empty((channels, src_h, out_w), np.float32)
    last_col = src_x + src_w - 1
    for k in range(channels):
        for r in range(src_h):
            row = src_y + r
            for c in range(out_w):
                if copies_last[c]:
                    mid[k, r, c] = src[k, row, last_col]
                else:
                    dx = frac_x[c]
                    mid[k, r, c] = ((one - dx) * src[k, row, src_x + left[c]]
                                    + dx * src[k, row, src_x + right[c]])

    for k in range(channels):
        for r in range(out_h):
            sy = np.float32(r) * h_scale
            iy = min(int(sy), src_h - 1)
            dy = sy - np.float32(iy)
            below = min(iy + 1, src_h - 1)
            top_only = r == out_h - 1 or src_h == 1
            weight_top = one - dy
            for c in range(out_w):
                value = weight_top * mid[k, iy, c]
                if not top_only:
                    value = value + dy * mid[k, below, c]
                dst[k, dst_y + r, dst_x + c] = value


@jit
def resize_image(src, dst):
    """Darknet resize_image: resample all of src (C, H, W) into dst (C, h, w)."""
    _resample_region(src, 0, 0, src.shape[2], src.shape[1], dst, 0, 0, dst.shape[2], dst.shape[1])


@jit
def letterbox_geometry(img_w, img_h, net_w, net_h):
    """(new_w, new_h, dx, dy): the resized size and int paste offset Darknet's letterbox uses."""
    # The choice is made on float32 ratios, the sizes with C int division, as in letterbox_image.
    if np.float32(net_w) / np.float32(img_w) < np.float32(net_h) / np.float32(img_h):
        new_w = net_w
        new_h = (img_h * net_w) // img_w
    else:
        new_h = net_h
        new_w = (img_w * net_h) // img_h
    return new_w, new_h, (net_w - new_w) // 2, (net_h - new_h) // 2


@jit
def letterbox(src, out_w, out_h):
    """Darknet letterbox_image: aspect-preserving resize pasted on a 0.5-grey (C, out_h, out_w) canvas."""
    channels, height, width = src.shape
    new_w, new_h, dx, dy = letterbox_geometry(width, height, out_w, out_h)
    dst = np.full((channels, out_h, out_w), np.float32(0.5), np.float32)
    _resample_region(src, 0, 0, width, height, dst, dx, dy, new_w, new_h)
    return dst


@jit
def center_crop_image(src, dst):
    """Darknet center_crop_image: the centred min(W, H) square of src resized into dst (C, h, w)."""
    height = src.shape[1]
    width = src.shape[2]
    side = min(width, height)
    _resample_region(src, (width - side) // 2, (height - side) // 2, side, side,
                     dst, 0, 0, dst.shape[2], dst.shape[1])


@jit
def crop_image(src, dx, dy, dst):
    """Darknet crop_image: dst[k, j, i] = src[k, j + dy, i + dx] with coordinates clamped to the border."""
    channels, height, width = src.shape
    for k in range(channels):
        for j in range(dst.shape[1]):
            row = min(max(j + dy, 0), height - 1)
            for i in range(dst.shape[2]):
                col = min(max(i + dx, 0), width - 1)
                dst[k, j, i] = src[k, row, col]
