"""Everything image- and caption-specific, grouped along the data flow.

- ``data/``: the shapes generator, COCO annotations, the image cache, datasets, loaders, transforms;
- ``text/``: text normalisation and the BPE and WordPiece tokenizers;
- ``models/``: the ViT, the masked autoencoder, the caption decoder and the captioner's assembly;
- ``training/``: plain helpers the training scripts call (schedule, optimiser groups, unfreezing,
  checkpoints, the log, devices, torchrun);
- ``evaluation/``: beam-search captioning, BLEU and CIDEr-D, the blind baseline, pictures, curves;
- ``infra/``: infrastructure a reader may skip (downloads, build stamps, atomic writes, images in
  GPU memory, compile settings).
"""
