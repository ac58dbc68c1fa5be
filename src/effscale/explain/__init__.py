"""Class activation maps: which layer, which images, how faithful, and their figures."""
