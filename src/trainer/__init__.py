"""The trainer: one run's training loop (`loop`), and what is attached to it as listeners."""
