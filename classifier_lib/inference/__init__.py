"""Layer 4: a trained model as a file and as predictions. Checkpoints (`checkpoint`), logits with test-time
augmentation (`predict`), predictors for PyTorch (`predictor`) and ONNX Runtime (`onnx`) on a shared base
(`base`), export (`export`), ensemble files (`ensembles`) and pseudo-labels (`pseudo`).
"""
