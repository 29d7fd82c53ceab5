"""defectmap: unsupervised visual anomaly detection and localisation for industrial inspection."""

__version__ = "0.1.0"
