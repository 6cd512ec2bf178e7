"""Deployment: ONNX export (+ int8), prediction on image files, HTTP API with a web page.

    from dermae.deploy.export import export_onnx, export_run
    from dermae.deploy.predictor import Predictor, run_predict
    from dermae.deploy.server import create_app, serve

An export folder holds model.onnx (input float32 [N, 3, S, S] RGB in [0, 1], output
softmax probabilities; normalisation inside), model.int8.onnx, preprocess.json,
MODEL_CARD.md / model_card.json and the export and quantization reports. Predicting
from it needs only onnxruntime, numpy and Pillow. Submodules are imported on demand so
that `dermae predict` does not pay for torch when it runs an ONNX model.
"""
