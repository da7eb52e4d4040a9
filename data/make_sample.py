"""Regenerate the bundled CIFAR-10 sample, effv2_lib/sample/cifar10_sample.npz (package data).

Usage::

    python data/make_sample.py /path/to/cifar10            # writes effv2_lib/sample/cifar10_sample.npz
    python data/make_sample.py /path/to/cifar10 --out x.npz --seed 0 --train-per-class 250 --test-per-class 100

The source directory holds ``train.npz`` and ``test.npz``, each with ``x`` uint8
[N, 32, 32, 3] (NHWC, RGB) and ``y`` integer labels [N] in torchvision's class
order. From each split the script draws, per class, a fixed number of rows without
replacement with ``numpy.random.default_rng(seed)``, keeps them in their source
order, and saves them with their source row numbers so that anyone can check which
images were taken. It needs numpy only.

The archive is an ordinary ``.npz`` (a zip of ``.npy`` files) whose members are
LZMA-compressed instead of deflated: ``numpy.savez_compressed`` (deflate) leaves
3,500 CIFAR images at 9.4 MiB, LZMA at 7.8 MiB, under the 8 MiB budget.
``numpy.load`` reads it as it is, because Python's zipfile decompresses LZMA members.
"""

import argparse
import hashlib
import zipfile
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the source directory must hold train.npz and test.npz")
    with np.load(path) as archive:
        x, y = archive["x"], archive["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"{path}: expected x uint8 [N, 32, 32, 3], got {x.dtype} {list(x.shape)}")
    if y.shape != (len(x),) or y.min() < 0 or y.max() >= len(CIFAR10_CLASSES):
        raise ValueError(f"{path}: expected y [N] with labels 0-9, got shape {list(y.shape)}")
    return x, y.astype(np.int64)


def balanced_rows(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Source row numbers: `per_class` rows of each class, drawn without replacement, sorted."""
    rows = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            for c in range(len(CIFAR10_CLASSES))]
    return np.sort(np.concatenate(rows))


def save_npz_lzma(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an .npz whose members are LZMA-compressed (numpy.load reads it).

    Members carry a fixed timestamp, so the same inputs give a byte-identical file.
    """
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="directory holding train.npz and test.npz")
    default_out = Path(__file__).resolve().parent.parent / "effv2_lib" / "sample" / "cifar10_sample.npz"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=250)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        x, y = load_split(args.source / f"{split}.npz")
        rows = balanced_rows(y, per_class, rng)
        arrays[f"x_{split}"] = x[rows]                     # uint8 [n, 32, 32, 3]
        arrays[f"y_{split}"] = y[rows].astype(np.uint8)    # labels 0-9
        arrays[f"rows_{split}"] = rows.astype(np.int32)    # row numbers in the source split
    arrays["classes"] = np.array(CIFAR10_CLASSES)
    save_npz_lzma(args.out, arrays)

    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB, sha256 {digest})")
    for split in ("train", "test"):
        counts = np.bincount(arrays[f"y_{split}"], minlength=len(CIFAR10_CLASSES))
        mean = arrays[f"x_{split}"].reshape(-1, 3).mean(0) / 255
        print(f"  {split}: {len(arrays[f'y_{split}'])} images, per class {counts.tolist()}, "
              f"channel means {np.round(mean, 4).tolist()}")


if __name__ == "__main__":
    main()
