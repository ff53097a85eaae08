"""Custom TFX components of the IDPT pipeline."""
