import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, make_image

import classifier_lib.data.cache as cache_module
from classifier_lib.config import ConfigError, DataConfig
from classifier_lib.data.cache import clear_cache
from classifier_lib.data.dataset import ImageRows, channel_stats, load_data, load_held_out, load_split
from classifier_lib.data.folders import DataLayoutError, FlatImageDataset, find_splits
from classifier_lib.data.splits import held_out_split


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


def test_without_valid_folder_a_seeded_split_is_made(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=(10, 0), valid=False)
    data = load_data(DataConfig(data_dir=str(root), image_size=16, val_fraction=0.2), seed=3)
    assert len(data.train) + len(data.valid) == 30 and torch.bincount(data.valid.labels).min() >= 1
    assert not set(data.train.paths) & set(data.valid.paths)
    again = load_data(DataConfig(data_dir=str(root), image_size=16, val_fraction=0.2), seed=3)
    assert again.valid.paths == data.valid.paths
    other_seed = load_data(DataConfig(data_dir=str(root), image_size=16, val_fraction=0.2), seed=4)
    assert other_seed.valid.paths != data.valid.paths


def _paths(count: int, name: str = "cat") -> list[str]:
    return [f"/data/Train/{name}/img_{i:05d}.jpg" for i in range(count)]


def test_held_out_split_keeps_class_proportions_and_one_image_on_each_side():
    paths = _paths(3000, "cat") + _paths(1000, "dog") + _paths(2, "rare") + _paths(1, "single")
    labels = np.array([0] * 3000 + [1] * 1000 + [2] * 2 + [3])
    chosen, rest = held_out_split(paths, labels, 0.2, seed=0, root="/data/Train")
    counts = np.bincount(labels[chosen], minlength=4)
    assert abs(counts[0] - 600) < 75 and abs(counts[1] - 200) < 45  # about 20 % (4 sd of a binomial)
    assert counts[2] == 1 and counts[3] == 0  # two images: one each side; one image: it trains
    ten = held_out_split(_paths(10, "small"), np.zeros(10, dtype=int), 0.05, seed=0, root="/data/Train")[0]
    assert len(ten) == 3  # 5 % of 10 would be none: a class keeps a few images to be measured on
    assert sorted(np.concatenate([chosen, rest]).tolist()) == list(range(len(labels)))


def test_adding_a_file_moves_no_other_file_between_the_splits():
    """The held-out split is a function of each file's path: a new image (even first in the list) never
    sends a training image to validation (the index-based split put 168 of 300 into the old training set)."""
    paths, labels = _paths(1500), np.zeros(1500, dtype=int)
    before = {paths[i] for i in held_out_split(paths, labels, 0.2, seed=0, root="/data/Train")[0]}
    grown = ["/data/Train/cat/aaa_new.jpg"] + paths
    after = {grown[i] for i in held_out_split(grown, np.zeros(1501, dtype=int), 0.2, seed=0, root="/data/Train")[0]}
    assert after - {"/data/Train/cat/aaa_new.jpg"} == before
    moved = [p.replace("/data/", "/elsewhere/") for p in paths]  # the folder moved: the split is the same
    assert {moved[i] for i in held_out_split(moved, labels, 0.2, seed=0, root="/elsewhere/Train")[0]} == {
        p.replace("/data/", "/elsewhere/") for p in before
    }


def test_subset_is_stratified(tiny_data):
    data = load_data(DataConfig(data_dir=str(tiny_data), image_size=16, subset=0.5))
    assert torch.bincount(data.train.labels).tolist() == [6, 6, 6]
    assert torch.bincount(data.valid.labels).tolist() == [3, 3, 3]


def test_images_are_uint8_at_the_largest_size_a_run_needs(tiny_data):
    data = load_data(DataConfig(data_dir=str(tiny_data), image_size=24, eval_size=24))
    assert data.train.images.dtype == torch.uint8
    assert data.train.images.shape == (36, 3, 24, 24)
    assert data.valid.images.shape == (18, 3, 24, 24)
    larger_test = load_data(DataConfig(data_dir=str(tiny_data), image_size=24))  # tested at 32 px: decoded at 32
    assert larger_test.train.images.shape == (36, 3, 32, 32)


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
    first = load_split(splits.train, splits.class_names, 16).data
    assert len(list((tmp_path / "cache").glob("images_*.json"))) == 1
    second = load_split(splits.train, splits.class_names, 16).data
    assert torch.equal(first.images, second.images) and first.paths == second.paths
    make_image(splits.train / "cat" / "new.png", (1, 2, 3))  # a changed file list is a new cache entry
    third = load_split(splits.train, splits.class_names, 16).data
    assert len(third) == len(first) + 1
    assert len(list((tmp_path / "cache").glob("images_*.json"))) == 2


def test_missing_data_dir_says_what_layout_is_expected(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist.*expected DATA_DIR/Train/<class>"):
        find_splits(tmp_path / "nowhere")


def test_folder_without_train_is_explained(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataLayoutError, match="no Train folder"):
        find_splits(tmp_path)


def test_cache_is_keyed_by_the_preprocessing_too(tiny_data, tmp_path, monkeypatch, request):
    """Another Pillow version or other decoding code may give other pixels: never reuse the old ones."""
    import classifier_lib.data.cache as cache_module

    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    splits = find_splits(tiny_data)
    load_split(splits.train, splits.class_names, 16)
    monkeypatch.setattr(cache_module.PIL, "__version__", "0.0-other")
    cache_module.preprocessing_fingerprint.cache_clear()
    request.addfinalizer(cache_module.preprocessing_fingerprint.cache_clear)  # later tests see the real version
    load_split(splits.train, splits.class_names, 16)
    assert len(list((tmp_path / "cache").glob("images_*.json"))) == 2


def test_cached_paths_are_absolute_whatever_the_working_directory(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tiny_data.parent)
    first = load_data(DataConfig(data_dir=tiny_data.name, image_size=16))
    monkeypatch.chdir(tiny_data)
    again = load_data(DataConfig(data_dir=".", image_size=16))  # the same files, now from the cache
    assert len(list((tmp_path / "cache").glob("images_*.json"))) == 2  # train and valid, reused
    assert first.train.paths == again.train.paths
    assert all(Path(p).is_absolute() and Path(p).exists() for p in again.train.paths)


def test_a_cache_index_that_names_the_files_otherwise_is_decoded_again(tiny_data, tmp_path, monkeypatch):
    """An entry written for a folder reached by a relative path (as `evaluate --folder` once did) has the key
    of the same files reached by their absolute path, but its index names them relatively: it is decoded
    again instead of failing on a path it cannot find."""
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tiny_data)
    names = ["cat", "dog", "panda"]
    relative = load_split(Path("Valid"), names, 16)
    assert not Path(relative.data.paths[0]).is_absolute()
    absolute = load_split(tiny_data / "Valid", names, 16)
    assert all(Path(p).is_absolute() for p in absolute.data.paths)
    assert absolute.data.labels.tolist() == relative.data.labels.tolist()
    assert torch.equal(absolute.data.images[:], relative.data.images[:])


def test_a_failed_cache_save_leaves_no_temporary_file(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))

    def disk_full(path, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", disk_full)
    splits = find_splits(tiny_data)
    assert len(load_split(splits.train, splits.class_names, 16).data) == 36  # decoded in memory instead
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written or temporary file


def test_the_cache_reserves_its_blocks_before_writing_pixels(tmp_path, monkeypatch):
    """A memory-mapped write into a sparse file on a full disk is SIGBUS, not an exception: every block
    is allocated before the decoders write, so a full disk fails as an OSError before any pixel."""
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}

    def decode(out):
        tmp = next((tmp_path / "cache").glob("images_*.tmp*.npy"))
        seen["allocated"] = tmp.stat().st_blocks * 512
        out[:] = 7
        return "decoded"

    entry = tmp_path / "cache" / "images_test"
    assert cache_module.decode_into_cache(entry, 64, 32, decode) == "decoded"
    assert seen["allocated"] >= 64 * 3 * 32 * 32  # a sparse file holds (almost) no blocks
    assert np.load(entry.with_suffix(".npy")).min() == 7


def test_a_full_disk_at_reservation_decodes_in_memory_and_leaves_nothing(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))

    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.os, "posix_fallocate", no_space)
    splits = find_splits(tiny_data)
    assert len(load_split(splits.train, splits.class_names, 16).data) == 36
    assert list((tmp_path / "cache").iterdir()) == []


def test_stale_temporary_files_of_dead_decoders_are_removed(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "cache" / f"images_0123.tmp{int(dead.stdout)}.npy"
    running = tmp_path / "cache" / f"images_4567.tmp{os.getpid()}.npy"  # a decoder still at work
    for path in (stale, running):
        path.write_bytes(b"\0" * 4096)
    splits = find_splits(tiny_data)
    load_split(splits.train, splits.class_names, 16)
    assert not stale.exists() and running.exists()


def test_the_cache_keeps_under_its_cap_dropping_the_least_recently_used(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    splits = find_splits(tiny_data)
    entry_bytes = 36 * 3 * 16 * 16 + 128  # the train split at 16 px, with the .npy header
    monkeypatch.setenv("CLASSIFIER_CACHE_MAX_GB", str(2.5 * entry_bytes / 2**30))  # room for two entries

    def entries():
        return {p.stem for p in (tmp_path / "cache").glob("images_*.json")}

    first = load_split(splits.train, splits.class_names, 16)
    a = entries()
    load_split(splits.train, splits.class_names, 17)
    b = entries() - a
    time.sleep(0.01)
    load_split(splits.train, splits.class_names, 16)  # a cache hit: a is now the most recently used
    load_split(splits.train, splits.class_names, 15)
    assert a <= entries() and not b & entries() and len(entries()) == 2  # b, least recently used, went
    assert torch.equal(load_split(splits.train, splits.class_names, 16).data.images, first.data.images)
    monkeypatch.setenv("CLASSIFIER_CACHE_MAX_GB", "lots")
    with pytest.raises(ConfigError, match="CLASSIFIER_CACHE_MAX_GB"):
        load_split(splits.train, splits.class_names, 14)


def test_the_cache_is_a_memory_mapped_array_and_an_incomplete_entry_is_rebuilt(tiny_data, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    splits = find_splits(tiny_data)
    first = load_split(splits.train, splits.class_names, 16).data
    pixels = next((tmp_path / "cache").glob("images_*.npy"))
    on_disk = np.load(pixels, mmap_mode="r")
    assert on_disk.shape == (36, 3, 16, 16) and np.array_equal(on_disk, first.images.numpy())
    pixels.with_suffix(".json").unlink()  # as if the process died before finishing the entry
    again = load_split(splits.train, splits.class_names, 16).data
    assert torch.equal(again.images, first.images)
    assert pixels.with_suffix(".json").exists()


def test_clear_cache(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    load_data(DataConfig(data_dir=str(tiny_data), image_size=16))
    assert clear_cache()[0] == 4 and list((tmp_path / "cache").iterdir()) == []  # pixels and index, 2 splits


def test_skipped_files_are_counted_once_without_a_valid_folder(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=(10, 0), valid=False)
    (root / "Train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    data = load_data(DataConfig(data_dir=str(root), image_size=16))
    assert [Path(p).name for p, _ in data.skipped] == ["broken.jpg"]
    assert "held out" in data.valid_source


def test_train_on_all_trains_on_both_splits(tiny_data):
    data = load_data(DataConfig(data_dir=str(tiny_data), image_size=16, train_on_all=True))
    assert len(data.train) == 36 + 18 and set(data.valid.paths) <= set(data.train.paths)


def test_held_out_split_is_rebuilt_from_config_and_seed(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=(10, 0), valid=False)
    config = DataConfig(data_dir=str(root), image_size=16)
    trained = load_data(config, seed=5)
    held_out, source = load_held_out(config, seed=5)
    assert held_out.paths == trained.valid.paths and not set(held_out.paths) & set(trained.train.paths)
    assert "seed 5" in source


def test_decoding_copies_batches_into_one_array_with_few_file_handles(tmp_path):
    """Decoded images come back one tensor per batch, not per image: with a low open-file limit, 600
    images through two worker processes still decode (one shared-memory handle per image did not)."""
    for i in range(600):
        make_image(tmp_path / "imgs" / f"{i:04d}.png", (i % 256, 0, 0), size=(8, 8), seed=i)
    (tmp_path / "imgs" / "9999_bad.png").write_bytes(b"nope")
    script = (
        "import resource, sys; from pathlib import Path\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from classifier_lib.data.folders import FlatImageDataset, list_images\n"
        f"paths, _ = list_images(Path({str(tmp_path / 'imgs')!r}))\n"
        "images, kept, skipped = FlatImageDataset(paths, 8).decode_all(workers=2)\n"
        "assert images.shape == (600, 3, 8, 8) and kept == list(range(600)) and len(skipped) == 1, images.shape\n"
        "print('ok')\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.stdout.strip() == "ok", completed.stderr[-3000:]


def test_test_folder_ids_are_built_once(monkeypatch):
    """Ids are computed once, one path each: indexing them per image must not rebuild the whole list."""
    calls = []
    relative_to = Path.relative_to
    monkeypatch.setattr(Path, "relative_to", lambda self, *other: calls.append(self) or relative_to(self, *other))
    paths = [Path("/data/Test") / f"part{i % 7}" / f"img_{i}.jpg" for i in range(2_000)]
    dataset = FlatImageDataset(paths, 32, Path("/data/Test"))
    ids = [dataset.ids[i] for i in range(len(dataset))]
    assert len(calls) == 2_000  # a per-access rebuild would make 2,000 x 2,000
    assert ids[8] == "part1/img_8.jpg"


@pytest.mark.parametrize("layout", ["no Valid folder", "subset", "extra folder", "train_on_all"])
def test_derived_splits_are_rows_of_the_mapped_cache_not_copies(tmp_path, layout):
    """A held-out split, a subset, Train + an extra folder and Train + Valid gather their rows from the
    memory-mapped cache entries batch by batch: no split is copied into memory (once per rank under DDP)."""
    root = make_dataset(tmp_path / "d", per_class=(10, 4), valid=layout != "no Valid folder")
    options = {"subset": {"subset": 0.5}, "train_on_all": {"train_on_all": True}}.get(layout, {})
    if layout == "extra folder":
        make_image(tmp_path / "extra" / "dog" / "x.png", (60, 200, 60), seed=99)
        options = {"extra_train_dir": str(tmp_path / "extra")}
    data = load_data(DataConfig(data_dir=str(root), image_size=16, **options))
    mapped = {
        id(part) for split in (data.train, data.valid) if isinstance(split.images, ImageRows) for part in split.images.parts
    }
    assert isinstance(data.train.images, ImageRows) and mapped
    splits = find_splits(root)
    whole = load_split(splits.train, splits.class_names, 16).data  # the same entry, mapped again
    for position in (0, len(data.train) - 1):  # a row of the derived split is the cached image of its file
        path = data.train.paths[position]
        if path in whole.paths:
            assert torch.equal(data.train.images[position], whole.images[whole.paths.index(path)])
    batch = data.train[[0, len(data.train) - 1]][0]
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.uint8
    assert data.train.images[0:3].shape == (3, 3, 16, 16) and data.train.images.nbytes == len(data.train) * 3 * 16 * 16
