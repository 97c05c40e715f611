"""Synthetic data sets in the competitions' own layouts, so the whole pipeline runs without the real images.

One module per data-set format, each with its own calibration, label sampling and data-set writer: `rsna` (the
Kaggle RSNA Pneumonia layout: chest-like JPEG-baseline DICOMs, labels calibrated on the real table), `nih` (the
NIH ChestX-ray14 layout: PNGs with a visible sign per finding), `vinbigdata` (multi-reader `train.csv`, 12-16 bit
DICOMs of varying size) and `siim` (SIIM-COVID's two tables, studies of several DICOMs, category patterns). What
they share: `render` (the chest renderer) and `dicom` (writing a synthetic image as a DICOM file). The generators
only write files; the training data pipeline (`cxrdet.data`) reads them as it reads the real downloads.
"""
