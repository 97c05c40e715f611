"""cxrdet: chest X-ray object detection, Kaggle-style (RSNA Pneumonia Detection as the reference competition)."""

__version__ = "0.1.0"
