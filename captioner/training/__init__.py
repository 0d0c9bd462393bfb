"""Plain helpers the training scripts call; the training step itself is written out in the scripts."""
