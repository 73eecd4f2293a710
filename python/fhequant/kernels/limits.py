"""Size guards of the window ops (Conv, ConvTranspose, pools, Unfold): before allocating.

A hostile or broken model (pads, strides or a kernel near 10^6 on a small input) made the
window ops allocate gigabytes (a padded copy of the input, the sliding windows gathered for
the matmul, a huge transposed-conv output) before anything failed. Every window op checks
the sizes its geometry implies, per sample, against :data:`MAX_SAMPLE_ELEMENTS` first, and
raises ShapeError naming the op and the attribute values otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fhequant.errors import ShapeError

__all__ = ["MAX_SAMPLE_ELEMENTS", "check_sample_elements", "check_window_geometry"]

#: Most values one sample (batch row) of a window op's buffer may hold: 2**28 (2 GiB as
#: float64). The largest real model buffers are far below (a VGG 3x3 conv on 64 x 224 x 224
#: gathers about 2**25 values per sample).
MAX_SAMPLE_ELEMENTS = 2**28


def check_sample_elements(elements: int, what: str, name: str) -> None:
    """Raise ShapeError if a buffer of ``elements`` values per sample is over the limit.

    Args:
        elements: values per sample.
        what: the buffer, e.g. "the padded input".
        name: the op, for the message.
    """
    if elements > MAX_SAMPLE_ELEMENTS:
        raise ShapeError(
            f"{name}: {what} would hold {elements:.3g} values per sample, over the limit of "
            f"2**28 ({MAX_SAMPLE_ELEMENTS}); the op's pads, kernel, strides or dilations do "
            "not fit its input size (a broken or hostile model)"
        )


def check_window_geometry(
    channels: int,
    in_spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
    ends: Sequence[int],
    name: str,
) -> None:
    """Check the padded input and the gathered windows of a window op (per sample).

    Args:
        channels: input channels.
        in_spatial: the input's spatial sizes.
        kernel: kernel size per spatial axis.
        strides: strides per axis.
        dilations: dilations per axis.
        begins: padding at the start of each axis.
        ends: padding at the end of each axis.
        name: the op, for the message.

    Raises:
        ShapeError: a buffer over :data:`MAX_SAMPLE_ELEMENTS` values per sample.
    """
    padded = [int(n) + int(b) + int(e) for n, b, e in zip(in_spatial, begins, ends, strict=False)]
    geometry = (
        f" (input {list(in_spatial)}, pads {list(begins) + list(ends)}, kernel {list(kernel)})"
    )
    check_sample_elements(int(channels) * math.prod(padded), "the padded input" + geometry, name)
    out = [
        max(0, (p - ((int(k) - 1) * int(d) + 1)) // max(int(s), 1) + 1)
        for p, k, s, d in zip(padded, kernel, strides, dilations, strict=False)
    ]
    gathered = int(channels) * math.prod(out) * math.prod(int(k) for k in kernel)
    check_sample_elements(gathered, "the sliding windows" + geometry, name)
