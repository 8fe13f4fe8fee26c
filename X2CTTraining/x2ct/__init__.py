"""x2ct: chest radiographs (PA, optionally lateral) to a synthetic 3D chest CT.

Research use only; not for diagnosis. The package never imports Slicer.
"""

from __future__ import annotations

__version__ = "0.1.0"

PRODUCT_NAME = "SlicerX2CT"
"""Name written as Manufacturer / software name into every output."""
