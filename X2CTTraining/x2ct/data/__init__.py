"""Training data: the data-set builder, augmentation, procedural lesions and synthetic benchmark cases.

All arrays here live on the canonical grid of :mod:`x2ct.geometry` (its (D, H, W) axes), isotropic
voxels, CT in HU.
"""
