"""The one training loop, checkpoints, seeding and progress, shared by every stage."""
