"""An ipywidgets image tester: pick a checkpoint, upload or choose an image, see the prediction."""

from __future__ import annotations

import html
import io
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import Image

from classifier_lib.data.augment import resize
from classifier_lib.data.images import UnreadableImage
from classifier_lib.inference.base import Prediction
from classifier_lib.inference.predictor import Predictor
from classifier_lib.model.explain import grad_cam
from classifier_lib.report import plots
from classifier_lib.utils.runs import list_runs


def find_checkpoints(runs_root: str | Path = "runs") -> list[Path]:
    """Every run's last.pt / best.pt, newest run first: last.pt, not chosen on Valid, is the default."""
    found = []
    for run in reversed(list_runs(runs_root)):
        found += [run / "checkpoints" / name for name in ("last.pt", "best.pt") if (run / "checkpoints" / name).exists()]
    return found


class ImageTester:
    """The widget: `tester.widget` to display; `tester.show(bytes_or_path)` does what an upload does."""

    def __init__(self, runs_root: str | Path = "runs", data_dir: str | Path | None = None):
        self.predictor: Predictor | None = None
        self.last_prediction: Prediction | None = None
        checkpoints = [str(p) for p in find_checkpoints(runs_root)]
        self.checkpoint = widgets.Dropdown(options=checkpoints, description="checkpoint", layout={"width": "600px"})
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload image")
        examples = sorted(str(p) for p in Path(data_dir).rglob("*.jpg"))[:500] if data_dir else []
        self.example = widgets.Dropdown(
            options=["(choose an image)"] + examples, description="or pick", layout={"width": "600px"}
        )
        self.result = widgets.HTML()
        self.output = widgets.Output()
        self.checkpoint.observe(lambda change: self.load(change["new"]), names="value")
        self.upload.observe(self._on_upload, names="value")
        self.example.observe(self._on_example, names="value")
        self.widget = widgets.VBox([self.checkpoint, widgets.HBox([self.upload, self.example]), self.result, self.output])
        if checkpoints:
            self.load(checkpoints[0])
        else:
            self.result.value = f"<b>No checkpoints under {html.escape(str(runs_root))}/</b>: train a model first."

    def load(self, checkpoint: str | Path) -> None:
        self.predictor = Predictor(checkpoint, device="cpu")
        self.result.value = html.escape(f"loaded {checkpoint}: classes {', '.join(self.predictor.class_names)}")

    def show(self, source: bytes | str | Path) -> Prediction | None:
        """Predict one image, render it with its probabilities and Grad-CAM, and return the prediction."""
        if self.predictor is None:
            self.result.value = "<b>Choose a checkpoint first.</b>"
            return None
        try:
            image = self.predictor.preprocess(source)
        except UnreadableImage as error:
            self.result.value = f"<b style='color:#b00'>Cannot read this image:</b> {html.escape(str(error))}"
            return None
        prediction = self.predictor.predict_image(image)
        inputs = self.predictor.model_input(image.unsqueeze(0))
        heatmap, _ = grad_cam(self.predictor.model, inputs, self.predictor.class_names.index(prediction.label))
        self.last_prediction = prediction
        self.result.value = f"<h3>{html.escape(prediction.label)} ({prediction.confidence:.1%})</h3>"
        shown = resize(image.unsqueeze(0), self.predictor.eval_size)[0]  # the pixels the model saw
        figures = [
            plots.heatmap_overlays([shown], [heatmap], [prediction.label], columns=1),
            plots.probabilities(
                prediction.top(5), "the 5 most probable classes" if len(prediction.probabilities) > 5 else "class probabilities"
            ),
        ]
        self.output.outputs = ()
        for figure in figures:  # as PNG data, so the widget shows them with or without a live kernel
            self.output.append_display_data(Image(data=_png(figure)))
            plt.close(figure)
        return prediction

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            self.show(bytes(files[0]["content"]))

    def _on_example(self, change) -> None:
        if change["new"] and not change["new"].startswith("("):
            self.show(change["new"])


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()
