"""Periodic joint diffusion over lattice and fractional coordinates (DiffCSP-style).

Modules: :mod:`.model` (denoiser network, noise schedules, sampler), :mod:`.data` (training
rows and featurization), :mod:`.train` (the training command) and :mod:`.generator` (the
``diffusion`` entry of the generator registry). Torch is imported only by those modules.
"""

from __future__ import annotations
