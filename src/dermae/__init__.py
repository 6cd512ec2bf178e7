"""dermae: the DerMAE recipe for imbalanced dermoscopy classification."""

__version__ = "0.1.0"
