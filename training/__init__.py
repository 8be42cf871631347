"""PartCam training: datasets, augmentation, losses and metrics."""
