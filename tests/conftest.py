"""Test-wide settings."""

import os

import matplotlib

matplotlib.use("Agg")

# Several torch processes on 2 cores thrash when each spins 2 OpenMP threads;
# DERMAE_TEST_THREADS lets a busy machine run the suite with 1.
if "DERMAE_TEST_THREADS" in os.environ:
    import torch

    torch.set_num_threads(int(os.environ["DERMAE_TEST_THREADS"]))
