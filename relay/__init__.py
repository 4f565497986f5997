"""relay-trainer: keep fine-tuning runs alive across preemptible GPU pods."""

__version__ = "0.1.0"
