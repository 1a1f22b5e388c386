"""Conversion of a model to ONNX at export time (conversion.py), and model.onnx in a bundle before it is signed
(bundle.py). The converters of our own live beside it; servers only load the result (serving/engine.py)."""
