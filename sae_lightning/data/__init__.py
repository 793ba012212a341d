"""Token sources, the activation stream and the DataModule."""
