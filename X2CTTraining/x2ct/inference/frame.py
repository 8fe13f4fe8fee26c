"""Where the generator's input square lies on a radiograph, and the way back from that square to the radiograph.

Preprocessing (:mod:`x2ct.inference.preprocess`) centre-crops or zero-pads the radiograph as read to a
window of ``rows`` x ``cols`` pixels whose top-left corner is (``top``, ``left``) on it (negative
offsets are padding), then resizes the window to the model's S x S input square. :class:`InputFrame`
holds that window and is the one place that inverts it: a map on the square back onto the
radiograph's pixel grid (:meth:`InputFrame.to_radiograph`) and a square pixel back to radiograph
coordinates (:meth:`InputFrame.radiograph_rc`). Arrays are (rows, columns), row 0 at the top
(superior); columns as in :mod:`x2ct.views`. Pixel centres sit at integer coordinates (half-pixel
convention: pixel i covers [i - 0.5, i + 0.5]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def resample(array: np.ndarray, shape: Sequence[int], corners: bool = False) -> np.ndarray:
    """Bilinear (2D) or trilinear (3D) resampling of a float array to ``shape``, without anti-aliasing (for maps
    and same-scale inputs); float32, unchanged when the shape already matches. Half-pixel centres by default;
    ``corners``: the first and last samples land on the first and last positions (the inverse of a
    corner-aligned resize such as :func:`x2ct.data.loader.ct_to_unit`'s)."""
    if array.shape == tuple(shape):
        return array.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    mode = "bilinear" if array.ndim == 2 else "trilinear"
    return F.interpolate(tensor, size=tuple(shape), mode=mode, align_corners=corners)[0, 0].numpy()


@dataclass(frozen=True)
class InputFrame:
    """The window of a radiograph (``source_shape`` = (rows, cols) as read) that became the model's input square:
    ``rows`` x ``cols`` pixels from (``top``, ``left``); parts outside the radiograph are zero padding (air)."""

    top: int
    left: int
    rows: int
    cols: int
    source_shape: Tuple[int, int]

    @classmethod
    def centred(cls, source_shape: Tuple[int, int], rows: int, cols: int) -> InputFrame:
        """The window of ``rows`` x ``cols`` pixels centred on a radiograph of ``source_shape``."""
        src_rows, src_cols = (int(n) for n in source_shape)
        return cls(
            top=(src_rows - rows) // 2,
            left=(src_cols - cols) // 2,
            rows=int(rows),
            cols=int(cols),
            source_shape=(src_rows, src_cols),
        )

    @property
    def padded_fraction(self) -> float:
        """How much of the window lies outside the radiograph: padded rows over ``rows`` plus padded columns over
        ``cols`` (0 for a crop)."""
        return max(0, -self.top) * 2 / self.rows + max(0, -self.left) * 2 / self.cols

    def _overlap(self) -> Tuple[int, int, int, int]:
        """(r0, r1, c0, c1): the rows and columns of the radiograph that the window covers."""
        src_rows, src_cols = self.source_shape
        return (
            max(self.top, 0),
            min(self.top + self.rows, src_rows),
            max(self.left, 0),
            min(self.left + self.cols, src_cols),
        )

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        """The window of ``pixels`` (the radiograph as read) as float32 (rows, cols), zero where it is padding."""
        out = np.zeros((self.rows, self.cols), dtype=np.float32)
        r0, r1, c0, c1 = self._overlap()
        out[r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left] = pixels[r0:r1, c0:c1]
        return out

    def to_radiograph(self, square: np.ndarray) -> np.ndarray:
        """A map on the model-input square -> float32 on the radiograph's pixel grid (``source_shape``): resized
        bilinearly to the window and pasted there; the radiograph outside the window gets 0."""
        window = resample(square, (self.rows, self.cols))
        out = np.zeros(self.source_shape, dtype=np.float32)
        r0, r1, c0, c1 = self._overlap()
        out[r0:r1, c0:c1] = window[r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left]
        return out

    def radiograph_rc(self, row: int, col: int, square_shape: Tuple[int, int]) -> Tuple[float, float]:
        """The centre of pixel (``row``, ``col``) of a map on the model-input square (of ``square_shape``, any
        size) in the radiograph's (row, column) coordinates (pixels, may be fractional)."""
        return (
            self.top + (row + 0.5) * self.rows / square_shape[0] - 0.5,
            self.left + (col + 0.5) * self.cols / square_shape[1] - 0.5,
        )

    def to_record(self) -> Dict[str, int]:
        """The JSON record ``window_px`` (summary.json): top, left, rows, cols."""
        return {"top": int(self.top), "left": int(self.left), "rows": int(self.rows), "cols": int(self.cols)}
