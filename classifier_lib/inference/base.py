"""What every predictor shares (PyTorch or ONNX Runtime): decoding files and folders around
`probabilities`, and the shapes of its answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from classifier_lib.data.dataset import Images
from classifier_lib.data.folders import DataLayoutError, FlatImageDataset
from classifier_lib.data.images import load_image


@dataclass
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]

    def top(self, k: int = 5) -> dict[str, float]:
        """The `k` most probable classes and their probabilities, most probable first."""
        return dict(sorted(self.probabilities.items(), key=lambda item: -item[1])[:k])


@dataclass
class FolderPredictions:
    ids: list[str]  # paths relative to the folder, readable files only
    probabilities: torch.Tensor  # len(ids) x classes
    class_names: list[str]
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable files

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.probabilities.argmax(dim=1).tolist()]


class ClassifierBase:
    """What every predictor shares: the decoding of files and folders around `probabilities`.

    Subclasses set `class_names` and `decode_size` (the size files are decoded to, as in training)
    and implement `probabilities` for a uint8 N x 3 x S x S batch.
    """

    class_names: list[str]
    decode_size: int

    def probabilities(self, images: Images, batch_size: int = 256) -> torch.Tensor:
        raise NotImplementedError

    def preprocess(self, source: str | Path | bytes) -> torch.Tensor:
        """A file path or the file's bytes to the uint8 tensor the model's training used."""
        return load_image(source, self.decode_size)

    def predict(self, source: str | Path | bytes) -> Prediction:
        return self.predict_image(self.preprocess(source))

    def predict_image(self, image: torch.Tensor) -> Prediction:
        """Predict one already preprocessed uint8 3 x S x S image."""
        probs = self.probabilities(image.unsqueeze(0))[0]
        index = int(probs.argmax())
        return Prediction(self.class_names[index], float(probs[index]), dict(zip(self.class_names, probs.tolist())))

    def predict_folder(self, folder: str | Path, workers: int = 0, batch_size: int = 128) -> FolderPredictions:
        """Predict every image under `folder` (nested folders too) as a stream: decode a batch, predict
        it, keep only its probabilities; unreadable files are listed, not fatal."""
        dataset = FlatImageDataset.from_folder(folder, self.decode_size)
        kept, skipped, probabilities = [], [], []
        for images, indices, failures in dataset.stream(workers, "predicting test images", batch_size):
            if indices:
                probabilities.append(self.probabilities(images))
            kept += indices
            skipped += failures
        if not kept:
            raise DataLayoutError(f"none of the {len(dataset)} image files under {folder} could be read, e.g. {skipped[0][1]}")
        ids = dataset.ids
        return FolderPredictions([ids[i] for i in kept], torch.cat(probabilities), self.class_names, skipped)
