"""The coordinator (Flower ServerApp): aggregation, checkpoints, the run report. No patient data."""
