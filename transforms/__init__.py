"""Canonical log features, readers, the synthetic log generator and preprocessing_fn."""
