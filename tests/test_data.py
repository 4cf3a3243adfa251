import numpy as np
import pytest
import torch

from classifier_lib.config import DataConfig
from classifier_lib.data import DataLayoutError, channel_stats, find_splits, load_data, load_split, stratified_split

from conftest import make_dataset, make_image


def test_finds_splits_and_classes(tiny_data):
    splits = find_splits(tiny_data)
    assert splits.class_names == ["cat", "dog", "panda"]
    assert splits.train.name == "Train" and splits.valid.name == "Valid" and splits.test.name == "Test"


def test_lowercase_layout(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "Train").rename(root / "train")
    (root / "Valid").rename(root / "val")
    splits = find_splits(root)
    assert splits.train.name == "train" and splits.valid.name == "val"


def test_without_valid_folder_a_stratified_seeded_split_is_made(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=(10, 0), valid=False)
    data = load_data(DataConfig(data_dir=str(root), image_size=16, val_fraction=0.2), seed=3)
    assert len(data.train) == 24 and len(data.valid) == 6
    assert torch.bincount(data.valid.labels).tolist() == [2, 2, 2]
    assert not set(data.train.paths) & set(data.valid.paths)
    again = load_data(DataConfig(data_dir=str(root), image_size=16, val_fraction=0.2), seed=3)
    assert again.valid.paths == data.valid.paths


def test_stratified_split_keeps_class_proportions_and_at_least_one():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    chosen, rest = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [5, 3, 1]
    assert sorted(np.concatenate([chosen, rest]).tolist()) == list(range(len(labels)))


def test_subset_is_stratified(tiny_data):
    data = load_data(DataConfig(data_dir=str(tiny_data), image_size=16, subset=0.5))
    assert torch.bincount(data.train.labels).tolist() == [6, 6, 6]
    assert torch.bincount(data.valid.labels).tolist() == [3, 3, 3]


def test_images_are_uint8_at_training_resolution(tiny_data):
    data = load_data(DataConfig(data_dir=str(tiny_data), image_size=24))
    assert data.train.images.dtype == torch.uint8
    assert data.train.images.shape == (36, 3, 24, 24)
    assert data.valid.images.shape == (18, 3, 24, 24)


def test_mean_std_are_exact_over_all_training_pixels(tiny_data):
    data = load_data(DataConfig(data_dir=str(tiny_data), image_size=24))
    pixels = data.train.images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(data.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(data.std, pixels.std(axis=(0, 2, 3)), rtol=1e-10)


def test_channel_stats_is_not_a_mean_of_batch_means():
    images = torch.zeros(5, 3, 2, 2, dtype=torch.uint8)
    images[4] = 255  # one bright image in a final chunk of one
    mean, std = channel_stats(images, chunk=4)
    assert mean == pytest.approx((0.2, 0.2, 0.2))
    assert std == pytest.approx((0.4, 0.4, 0.4))


def test_decoded_split_is_cached_on_disk(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    splits = find_splits(tiny_data)
    first = load_split(splits.train, splits.class_names, 16)
    assert len(list((tmp_path / "cache").glob("images_*.pt"))) == 1
    second = load_split(splits.train, splits.class_names, 16)
    assert torch.equal(first.images, second.images) and first.paths == second.paths
    make_image(splits.train / "cat" / "new.png", (1, 2, 3))  # a changed file list is a new cache entry
    third = load_split(splits.train, splits.class_names, 16)
    assert len(third) == len(first) + 1
    assert len(list((tmp_path / "cache").glob("images_*.pt"))) == 2


def test_missing_data_dir_says_what_layout_is_expected(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist.*expected DATA_DIR/Train/<class>"):
        find_splits(tmp_path / "nowhere")


def test_folder_without_train_is_explained(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataLayoutError, match="no Train folder"):
        find_splits(tmp_path)
