"""Deployment: a trained fold model exported for use outside cxrdet (`export`: ONNX graphs and Core ML packages
with sidecars), and single-study inference on DICOM files with an export or a checkpoint (`infer`)."""
