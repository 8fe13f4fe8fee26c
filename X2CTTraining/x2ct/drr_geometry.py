"""The cone-beam geometry of a DRR (no torch here, so the command line can read its defaults quickly).

:mod:`x2ct.drr` renders with it; see that module for how the source, the isocentre and the detector
are placed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DRRGeometry:
    """Cone-beam geometry in mm. Defaults = official X2CT-GAN DRRs; set them for your own X-ray room.

    ``sad_mm``: source to isocentre; ``sid_mm``: source to detector plane; ``detector_mm``: edge of
    the square detector. The pixel count is chosen per call (``size``).
    """

    sad_mm: float = 541.0
    sid_mm: float = 949.0
    detector_mm: float = 500.0

    def __post_init__(self) -> None:
        if not (self.sad_mm > 0 and self.sid_mm > self.sad_mm and self.detector_mm > 0):
            raise ValueError(
                f"need 0 < SAD < SID and detector > 0 (mm), got SAD {self.sad_mm}, SID {self.sid_mm}, "
                f"detector {self.detector_mm}"
            )

    @property
    def magnification(self) -> float:
        """Magnification of an object at the isocentre (SID / SAD)."""
        return self.sid_mm / self.sad_mm

    def detector_spacing_mm(self, size: int) -> float:
        """Pixel pitch on the detector in mm for ``size`` pixels per edge."""
        return self.detector_mm / size

    def isocenter_spacing_mm(self, size: int) -> float:
        """Pixel pitch back-projected to the isocentre plane in mm (detector pitch x SAD / SID)."""
        return self.detector_spacing_mm(size) / self.magnification
