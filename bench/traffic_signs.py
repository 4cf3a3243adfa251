"""Build a second data set of another shape than Animals: 43 classes of German traffic signs, unbalanced
(about 10x between the largest and smallest class), small images of 15-250 px, laid out as this project
reads any folder: OUT/Train/<class>/, OUT/Valid/<class>/, and OUT/Heldout/<class>/ (labelled images for
`evaluate --folder` and `time_to_accuracy.py --folder`), with no Test/ folder.

    python bench/traffic_signs.py --source PATH/TO/traffic-sign-recognition --out ../shared/traffic_signs

Source (a public repository; clone it, or point --source at a bare mirror of it):
- hergerr/traffic-sign-recognition, `GTSRB/`: the German Traffic Sign Recognition Benchmark (Stallkamp et
  al., IJCNN 2011): Final_Training (39,209 images) and Final_Test (12,630 images, labels in
  GT-final_test.csv).

GTSRB's training images come in tracks of 30 frames of one physical sign filmed as a car approaches it:
frames of one track are near copies, so a random split would score the model on training images. Here
whole tracks go to Train or Valid (VALID_SHARE of each class's tracks, at least one), and FRAMES frames
are kept per track, evenly spaced from far to near. Heldout is every TEST_EVERY-th image of the official
test set, filmed apart from the training tracks. Left and right matter for traffic signs (keep left /
keep right), so train with `-s data.mirror false`. The images are never committed.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image
from sources import repository_files  # bench/sources.py, beside this script

SOURCE_ROOT = "GTSRB"
VALID_SHARE = 0.2
FRAMES = 3
TEST_EVERY = 3
CLASS_NAMES = [
    "speed_20", "speed_30", "speed_50", "speed_60", "speed_70", "speed_80", "end_speed_80", "speed_100",
    "speed_120", "no_passing", "no_passing_trucks", "right_of_way", "priority_road", "yield", "stop",
    "no_vehicles", "no_trucks", "no_entry", "caution", "curve_left", "curve_right", "double_curve",
    "bumpy_road", "slippery_road", "narrows_right", "road_work", "traffic_signals", "pedestrians",
    "children", "bicycles", "ice_snow", "wild_animals", "end_limits", "turn_right", "turn_left",
    "ahead_only", "straight_or_right", "straight_or_left", "keep_right", "keep_left", "roundabout",
    "end_no_passing", "end_no_passing_trucks",
]  # fmt: skip


def class_folder(class_id: int) -> str:
    """`07_speed_100`: the id first, so that the folders sort in GTSRB's order."""
    return f"{class_id:02d}_{CLASS_NAMES[class_id]}"


def training_tracks(files: dict[str, bytes]) -> dict[int, dict[str, list[str]]]:
    """{class id: {track id: its frames' paths, in order}} of Final_Training."""
    tracks: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name in sorted(files):
        parts = Path(name).parts
        if len(parts) == 5 and parts[1] == "Final_Training" and name.endswith(".ppm"):
            tracks[int(parts[3])][Path(name).stem.split("_")[0]].append(name)
    return tracks


def spaced(frames: list[str], count: int) -> list[str]:
    """`count` frames evenly spaced from the first (far) to the last (near)."""
    if len(frames) <= count:
        return frames
    return [frames[round(i * (len(frames) - 1) / (count - 1))] for i in range(count)] if count > 1 else frames[-1:]


def test_labels(files: dict[str, bytes]) -> list[tuple[str, int]]:
    """(path, class id) of every official test image, from GT-final_test.csv."""
    rows = csv.DictReader(io.StringIO(files[f"{SOURCE_ROOT}/Final_Test/GT-final_test.csv"].decode()), delimiter=";")
    return [(f"{SOURCE_ROOT}/Final_Test/Images/{row['Filename']}", int(row["ClassId"])) for row in rows]


def save_png(data: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(data)).convert("RGB").save(target.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="a clone (or bare mirror) of hergerr/traffic-sign-recognition")
    parser.add_argument("--out", type=Path, required=True, help="a new folder: OUT/{Train,Valid,Heldout}/<class>/")
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames kept per track")
    parser.add_argument("--test-every", type=int, default=TEST_EVERY, help="keep every N-th official test image")
    parser.add_argument("--seed", type=int, default=0, help="which tracks go to Valid")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    files = repository_files(args.source, SOURCE_ROOT)
    counts: dict[str, int] = defaultdict(int)
    rng = random.Random(args.seed)
    for class_id, tracks in sorted(training_tracks(files).items()):
        names = sorted(tracks)
        rng.shuffle(names)
        valid_tracks = set(names[: max(1, round(VALID_SHARE * len(names)))])
        for track in names:
            split = "Valid" if track in valid_tracks else "Train"
            for frame in spaced(tracks[track], args.frames):
                save_png(files[frame], args.out / split / class_folder(class_id) / Path(frame).name)
                counts[split] += 1
    for path, class_id in test_labels(files)[:: args.test_every]:
        save_png(files[path], args.out / "Heldout" / class_folder(class_id) / Path(path).name)
        counts["Heldout"] += 1
    per_class = [len(list(folder.iterdir())) for folder in sorted((args.out / "Train").iterdir())]
    print(f"{args.out}: {dict(counts)} images; {len(per_class)} classes, {min(per_class)}-{max(per_class)} training images each")


if __name__ == "__main__":
    main()
