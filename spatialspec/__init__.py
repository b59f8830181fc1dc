"""spatialspec: spatial specificity of supervision vs. spurious features in medical imaging."""

__version__ = "0.1.0"
