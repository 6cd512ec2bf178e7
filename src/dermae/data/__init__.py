"""Datasets: ingest three layouts, lesion-grouped splits, a uint8 image cache, torch Datasets."""
