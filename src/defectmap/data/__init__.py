"""Datasets on disk: layouts, integrity checks, synthetic data, download and safe image reading."""
