"""Classifiers: the plain baseline and the teacher fine-tuning, built on timm."""
