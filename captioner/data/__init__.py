"""Data: the synthetic shapes dataset, COCO annotations, the uint8 image cache, datasets, loaders, transforms."""
