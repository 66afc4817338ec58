"""Dense downstream probes on a frozen backbone: linear segmentation, depth, correspondence."""
