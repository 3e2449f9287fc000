"""sdbatch: a declarative batch renderer for Stable Diffusion."""

__version__ = "0.1.0"
