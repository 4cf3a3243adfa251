"""Build a labelled folder of cat / dog / panda photos from collections other than the Animals set's, for
`evaluate --folder`, the pipeline's `eval_dirs` and `time_to_accuracy.py --folder`.

    python bench/other_collections.py --source PATH/TO/AILearningHub --out data/other_collections   # data/ is git-ignored

Source (a public repository; clone it, or point --source at a bare mirror of it):
- LTSACH/AILearningHub, `datasets/oxford-pets/data/sample_images/{cats,dogs}/`: 370 photos sampled from
  the Oxford-IIIT Pet Dataset (Parkhi et al., CVPR 2012; CC BY-SA 4.0), 10 per breed: 12 cat breeds and
  25 dog breeds, other photographers and settings than the Animals set (whose cats and dogs come from the
  Asirra / Kaggle "Dogs vs. Cats" photos).

Laid out as OUT/<class>/<breed>/<file>, one level below the class (evaluation reads any depth). Every
photo is compared with every Animals image (Train, Valid, Test): an exact copy (same bytes) or a near
copy (a 64-bit difference hash within NEAR_BITS bits) is left out and counted. No panda source with
enough photos was found in public repositories yet, so the folder has cats and dogs only; evaluation
accepts a folder with fewer classes than the model knows. The images are never committed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sources import repository_files  # bench/sources.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
ANIMALS = ROOT.parent / "shared" / "datasets" / "animals"
SAMPLES = "datasets/oxford-pets/data/sample_images"
CLASSES = {"cats": "cat", "dogs": "dog"}
NEAR_BITS = 6  # difference hashes this close (of 64 bits) are the same photo, resized or re-encoded


def difference_hash(image: Image.Image) -> int:
    """A 64-bit perceptual hash: whether each pixel of a 9 x 8 grey thumbnail is brighter than its right
    neighbour. Resizing, re-encoding and small colour changes keep it; another photo does not."""
    pixels = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def animals_fingerprints(animals: Path) -> tuple[set[str], np.ndarray]:
    """(sha1 of every Animals file, the difference hash of every Animals image)."""
    digests, hashes = set(), []
    for path in sorted(p for p in animals.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digests.add(hashlib.sha1(data).hexdigest())
        try:
            hashes.append(difference_hash(Image.open(io.BytesIO(data))))
        except OSError:
            continue
    return digests, np.array(hashes, dtype=np.uint64)


def near_copy(hash_value: int, hashes: np.ndarray) -> bool:
    differing = np.bitwise_xor(hashes, np.uint64(hash_value))
    bits = np.unpackbits(differing.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    return bool((bits <= NEAR_BITS).any())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="a clone (or bare mirror) of LTSACH/AILearningHub")
    parser.add_argument("--out", type=Path, required=True, help="a new folder: OUT/<class>/<breed>/<file>")
    parser.add_argument("--animals", type=Path, default=ANIMALS, help="the Animals set, to leave its photos out")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    digests, hashes = animals_fingerprints(args.animals)
    print(f"{len(hashes)} Animals images fingerprinted")
    kept: dict[str, int] = {}
    left_out = {"exact copy": 0, "near copy": 0, "unreadable": 0}
    for name, data in sorted(repository_files(args.source, SAMPLES).items()):
        folder, file = Path(name).parts[-2:]
        if folder not in CLASSES:
            continue
        try:
            hash_value = difference_hash(Image.open(io.BytesIO(data)))
        except OSError:
            left_out["unreadable"] += 1
            continue
        if hashlib.sha1(data).hexdigest() in digests:
            left_out["exact copy"] += 1
            continue
        if near_copy(hash_value, hashes):
            left_out["near copy"] += 1
            continue
        breed = file.rsplit("_", 1)[0]
        target = args.out / CLASSES[folder] / breed / file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        kept[CLASSES[folder]] = kept.get(CLASSES[folder], 0) + 1
    print(f"{args.out}: {kept} kept; left out: {left_out}")


if __name__ == "__main__":
    main()
