"""Models: the ViT (``vit.py``), the masked autoencoder (``mae.py``), the caption decoder, the captioner."""
