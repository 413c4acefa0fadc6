"""Image I/O, paired datasets, normalisation, transforms and the DRR benchmark generator."""
