"""Distillation of the fine-tuned teacher into a small student classifier."""
