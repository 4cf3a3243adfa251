"""Image folders on disk: the data set's layout, the image files in a folder, and decoding them.

Layout: `DATA_DIR/{Train,train}/<class>/...` and optionally `DATA_DIR/{Valid,valid,val}/<class>/...`
and `DATA_DIR/{Test,test}/...` (unlabelled, flat or nested).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from classifier_lib.data.images import IMAGE_EXTENSIONS, UnreadableImage, is_image_file, load_image
from classifier_lib.utils.device import usable_cpus
from classifier_lib.utils.progress import progress_bar_wanted

TRAIN_NAMES = ("Train", "train", "training")
VALID_NAMES = ("Valid", "valid", "val", "Val", "validation")
TEST_NAMES = ("Test", "test")
EXPECTED_LAYOUT = (
    "expected DATA_DIR/Train/<class>/*.jpg (one folder per class), optionally DATA_DIR/Valid/<class>/ "
    "with the same class folders and an unlabelled DATA_DIR/Test/"
)


class DataLayoutError(ValueError):
    """The data folder cannot be used; the message says what is wrong and what is expected."""


@dataclass
class Splits:
    root: Path
    train: Path
    valid: Path | None
    test: Path | None
    class_names: list[str]


def find_splits(data_dir: str | Path) -> Splits:
    """Locate the train / valid / test folders and the class names, or say clearly what is wrong."""
    root = Path(data_dir).expanduser().resolve()  # absolute: cache entries and ids never depend on the cwd
    if not root.is_dir():
        raise DataLayoutError(f"data folder {root} does not exist; {EXPECTED_LAYOUT}")
    train = _first_existing(root, TRAIN_NAMES)
    if train is None:
        raise DataLayoutError(f"no Train folder in {root}; {EXPECTED_LAYOUT}")
    valid = _first_existing(root, VALID_NAMES)
    class_names = class_folders(train)
    if len(class_names) < 2:
        raise DataLayoutError(
            f"{train} has {len(class_names)} class folder(s) {class_names}; a classifier needs at least two; " + EXPECTED_LAYOUT
        )
    if valid is not None:
        valid_classes = class_folders(valid)
        if valid_classes != class_names:
            raise DataLayoutError(
                f"class folders differ between {train} {class_names} and {valid} {valid_classes}; "
                "rename or remove folders so both splits have the same classes"
            )
    return Splits(root, train, valid, _first_existing(root, TEST_NAMES), class_names)


def find_test_folder(data_dir: str | Path, test_dir: str | Path = "") -> Path | None:
    """The unlabelled images to submit predictions for: `test_dir` when given (it must exist), else the
    data folder's Test/ folder, else None (most data sets have none: nothing to submit)."""
    if test_dir:
        folder = Path(test_dir).expanduser()
        if not folder.is_dir():
            raise DataLayoutError(f"test folder {folder} does not exist")
        return folder
    return find_splits(data_dir).test


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files below `folder` (recursive, sorted) and the other files, skipped with a reason."""
    images, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if is_image_file(path):
            images.append(path)
        else:
            skipped.append((str(path), "not an image file type"))
    return images, skipped


def list_labelled(split_dir: Path, class_names: list[str], every_class: bool = True):
    """(image paths, their labels, skipped (path, reason)) of a labelled folder. With `every_class`
    False (an extra training folder) a class may be missing, but no folder may name an unknown one."""
    # Train defines the classes and find_splits checked Valid against them: only an extra folder needs this
    unknown = [] if every_class else sorted(set(class_folders(split_dir)) - set(class_names))
    if unknown:
        raise DataLayoutError(f"{split_dir} has class folders {unknown} that the training data does not have {class_names}")
    paths, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        class_paths, class_skipped = list_images(split_dir / name) if (split_dir / name).is_dir() else ([], [])
        if not class_paths and every_class:
            raise DataLayoutError(f"class folder {split_dir / name} holds no images; {EXPECTED_LAYOUT}")
        paths += class_paths
        labels += [label] * len(class_paths)
        skipped += class_skipped
    return paths, labels, skipped


class FlatImageDataset(Dataset):
    """Image files under a folder (flat or nested), unlabelled; `ids` are paths relative to it.

    Items are `(uint8 image, index, reason)`; an unreadable file gives an empty image and the reason,
    so one bad file is counted and skipped instead of stopping a whole DataLoader.
    """

    def __init__(self, paths: list[Path], size: int, root: Path | None = None):
        self.paths, self.size, self.root = list(paths), size, root
        self.ids = [p.relative_to(root).as_posix() if root else str(p) for p in self.paths]

    @classmethod
    def from_folder(cls, folder: str | Path, size: int) -> FlatImageDataset:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataLayoutError(f"image folder {folder} does not exist")
        paths, _ = list_images(folder)
        if not paths:
            raise DataLayoutError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        return cls(paths, size, folder)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return load_image(self.paths[index], self.size), index, ""
        except UnreadableImage as error:
            return torch.empty(0, dtype=torch.uint8), index, str(error)

    def collate(self, items):
        """In the worker: one uint8 tensor per batch (one shared-memory handle, not one per image)."""
        readable = [(image, index) for image, index, reason in items if not reason]
        images = torch.stack([image for image, _ in readable]) if readable else self.empty(0)
        return images, [index for _, index in readable], [(index, reason) for _, index, reason in items if reason]

    def empty(self, count: int) -> torch.Tensor:
        return torch.empty(count, 3, self.size, self.size, dtype=torch.uint8)

    def stream(self, workers: int = 0, desc: str = "decoding", batch_size: int = 32):
        """Decode the files in parallel, in order, a batch at a time: yields (uint8 images of the readable
        files, their indices, (path, reason) of the unreadable ones). Memory holds a few batches only."""
        workers = (workers or usable_cpus()) if len(self) > 32 else 0
        # An earlier loader's iterator can linger in a reference cycle (seen in Jupyter); workers forked now
        # would inherit it, and their garbage collector would print a spurious "can only test a child
        # process" traceback into the notebook. Collect it before forking.
        gc.collect()
        loader = DataLoader(self, batch_size=batch_size, num_workers=workers, collate_fn=self.collate)
        for images, indices, failures in tqdm(loader, desc=desc, leave=False, disable=not progress_bar_wanted()):
            yield images, indices, [(str(self.paths[index]), reason) for index, reason in failures]

    def decode_all(self, workers: int = 0, desc: str = "decoding", out: torch.Tensor | None = None):
        """Decode every file into one preallocated uint8 N x 3 x S x S tensor (`out`, e.g. backed by a
        memory-mapped file, or a new one in memory), readable files first.

        Returns (images of the readable files, their indices, (path, reason) of the others).
        """
        images = self.empty(len(self)) if out is None else out
        kept: list[int] = []
        skipped: list[tuple[str, str]] = []
        for batch, indices, failures in self.stream(workers, desc):
            images[len(kept) : len(kept) + len(indices)] = batch
            kept += indices
            skipped += failures
        return images[: len(kept)], kept, skipped


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / name for name in names if (root / name).is_dir()), None)
