"""The IDPT TFX pipeline definition, its custom components, runners and CLI."""
