"""Evaluation: beam-search captions of a split, BLEU and CIDEr-D, the blind baseline, pictures and curves."""
