"""Quantized Wan2.1/2.2 video diffusion on diffusers. The version is written into every file the
converter makes (metadata `producer_version`); pyproject.toml reads it from here."""
__version__ = "0.4.0"
