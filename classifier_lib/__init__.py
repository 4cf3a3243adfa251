"""classifier_lib: train, evaluate and explain a from-scratch residual CNN image classifier.

The package is layered; each layer imports only the ones listed before it (tests/test_layers.py checks):

    utils      files, paths, run folders, devices, progress, distributed helpers
    config     Config dataclasses; presets   named recipes and run_config, the one way to build a config
    data       decoding, folder layout, cache, splits, datasets, augmentation
    model      the ResNet, ensembles, EMA, activations and Grad-CAM
    inference  checkpoints, predictors (PyTorch, ONNX Runtime), export, ensemble files, pseudo-labels
    report     evaluation, figures, the image tester, run comparison, the HTML index
    training   the training state, steps, validation, the epoch loop and its run files, LR finder, torchrun
    workflow   the notebook pipeline and sweeps
    cli        `python -m classifier_lib ...`

The entry points most people call are importable from here:

    from classifier_lib import run_config, train, evaluate_checkpoint, Predictor, export
    result = train(run_config("fast", data_dir="path/to/data"))
    print(evaluate_checkpoint(result.last_checkpoint).accuracy)
    print(Predictor(result.last_checkpoint).predict("photo.jpg"))

They are loaded on first use, so that `import classifier_lib.report.index` (the HTML index) stays free of torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

PUBLIC = {  # name -> the module that defines it
    "Config": "classifier_lib.config",
    "run_config": "classifier_lib.presets",
    "preset_config": "classifier_lib.presets",
    "train": "classifier_lib.training.engine",
    "evaluate_checkpoint": "classifier_lib.report.evaluation",
    "evaluate_folder": "classifier_lib.report.evaluation",
    "Predictor": "classifier_lib.inference.predictor",
    "load_model": "classifier_lib.inference.checkpoint",
    "export": "classifier_lib.inference.export",
    "run_pipeline": "classifier_lib.workflow.pipeline",
}
__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str):
    if name in PUBLIC:
        return getattr(importlib.import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'classifier_lib' has no attribute {name!r}")
