"""Predicting with an exported ONNX file in ONNX Runtime (the `export` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from classifier_lib.data.dataset import Images
from classifier_lib.inference.base import ClassifierBase
from classifier_lib.inference.checkpoint import CheckpointError, check_class_names


class OnnxPredictor(ClassifierBase):
    """Predicts with an exported ONNX file in ONNX Runtime: the same decoding, files and CSVs as `Predictor`."""

    def __init__(self, path: str | Path):
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX file {path} does not exist")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime raises its own exception types for bad files
            raise CheckpointError(f"{path} is not a readable ONNX model: {str(error).splitlines()[0]}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in props:
            raise CheckpointError(f"{path} is an ONNX model but not one exported by classifier_lib (no class_names)")
        self.class_names = check_class_names(json.loads(props["class_names"]), path)
        self.decode_size = int(props.get("decode_size") or props["image_size"])  # image_size: files exported before
        self.metadata = props
        self.input = self.session.get_inputs()[0]

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities for a batch already in the graph's input type."""
        return torch.from_numpy(self.session.run(None, {self.input.name: images.numpy()})[0])

    def probabilities(self, images: Images, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities for a uint8 N x 3 x S x S batch."""
        float_input = self.input.type == "tensor(float)"
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        return torch.cat([self.run(chunk.float() / 255.0 if float_input else chunk) for chunk in chunks])
