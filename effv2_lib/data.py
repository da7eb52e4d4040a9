"""CIFAR-10 / CIFAR-100 as uint8 tensors, decoded once, from the first source that has them.

The progressive-learning experiments of Tan & Le (2021), "EfficientNetV2: Smaller Models
and Faster Training", Section 4, change the image size and the augmentation every stage.
Keeping the decoded images as one uint8 tensor makes both pipelines cheap: the CPU path
(`CifarSplit` + a per-sample transform from `effv2_lib.augment`) and the GPU-resident path
(`effv2_lib.augment.DeviceLoader`), which moves the whole tensor to the device once.

Sources, tried in this order by `load_cifar`:

1. a directory named by ``data_dir=`` or by the ``EFFV2_DATA`` environment variable, holding
   ``train.npz`` / ``test.npz`` (``x`` uint8 [N, 32, 32, 3] NHWC RGB, ``y`` integer labels [N])
   or an ImageFolder tree (``train/<class>/*.png``, ``test/<class>/*.png``), either directly
   or in a sub-folder named after the data set (``cifar10/``, ``cifar100/``);
2. torchvision's CIFAR10 / CIFAR100 files under `DATA_DIR`, downloaded there only when
   ``download=True``: the project's ``data/`` folder in a source checkout, else
   ``$XDG_CACHE_HOME/effv2`` (``~/.cache/effv2``), never the installed package's folder;
3. the bundled sample (package data ``effv2_lib/sample/cifar10_sample.npz``, CIFAR-10 only:
   250 training and 100 test images per class), with a `SampleDataWarning` saying so.

A source that was named (``data_dir``, ``EFFV2_DATA``, ``download=True``) and cannot be read is
an error, never a reason to fall back: results on the 2,500-image sample must not pass for
results on CIFAR.
"""

import contextlib
import contextvars
import hashlib
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ._checks import check_int
from .files import file_error, open_npz

DATA_ENV_VAR = "EFFV2_DATA"


def _download_dir() -> Path:
    """The source checkout's data/ folder (found from the package, so any working directory
    works), or, for an installed package, the user's cache: never inside site-packages."""
    checkout_data = Path(__file__).resolve().parent.parent / "data"
    if (checkout_data / "make_sample.py").is_file():  # only the repository has it
        return checkout_data
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "effv2"


# Where torchvision's downloads go and are looked for.
DATA_DIR = _download_dir()
# How messages name it: words that hold on every machine (a notebook's saved output is read on others).
DATA_DIR_WORDS = ("the repository's data/ folder" if (DATA_DIR / "make_sample.py").is_file()
                  else f"~/{DATA_DIR.relative_to(Path.home())}" if DATA_DIR.is_relative_to(Path.home())
                  else str(DATA_DIR))
# The bundled sample is package data: it travels with every install, editable or not.
SAMPLE_PATH = resources.files(__package__).joinpath("sample", "cifar10_sample.npz")
SAMPLE_NAME = f"{__package__}/sample/cifar10_sample.npz"  # how logs and summaries name it

# Per-channel mean and standard deviation of the training images, pixel values scaled to [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NORMALIZATION = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

# Label order of the original release, which torchvision keeps; both lists happen to be sorted,
# so an ImageFolder tree (classes sorted by folder name) gives the same labels.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
HOW_TO_GET_DATA = (
    "pass data_dir=DIR or set EFFV2_DATA=DIR (DIR holding train.npz and test.npz with x uint8 "
    "[N, 32, 32, 3] and y [N], or train/<class>/*.png and test/<class>/*.png), "
    f"or call load_cifar(..., download=True) to fetch it with torchvision into {DATA_DIR_WORDS}"
)

# Set while a command-line entry point runs (`effv2_lib._cli.one_line_errors`): the messages then
# name the command's options (--data, --download) instead of load_cifar's arguments.
_COMMAND_WORDS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("effv2_command_words", default=None)


@contextlib.contextmanager
def command_line_words(data: str = "--data", download: str | None = "--download") -> Iterator[None]:
    """Within the block, data errors speak to a command-line user: `data` names the option that
    gives a data directory, `download` the one that downloads (None: the command has none)."""
    token = _COMMAND_WORDS.set({"data": data, "download": download})
    try:
        yield
    finally:
        _COMMAND_WORDS.reset(token)


def _words() -> dict | None:
    return _COMMAND_WORDS.get()


def how_to_get_data() -> str:
    """What to do when the data set is missing, in the words of the caller (library or command)."""
    words = _words()
    if words is None:
        return HOW_TO_GET_DATA
    text = (f"pass {words['data']} DIR or set {DATA_ENV_VAR}=DIR (DIR holding train.npz and test.npz with x uint8 "
            "[N, 32, 32, 3] and y [N], or train/<class>/*.png and test/<class>/*.png)")
    if words["download"]:
        text += f", or {words['download']} to fetch it with torchvision into {DATA_DIR_WORDS}"
    return text


def _data_origin(explicit: bool) -> str:
    """How the data directory was named: load_cifar's argument or the command's option, or the variable."""
    if not explicit:
        return f"${DATA_ENV_VAR}"
    words = _words()
    return "data_dir" if words is None else words["data"]


class SampleDataWarning(UserWarning):
    """Issued when `load_cifar` falls back to the bundled 2,500-image CIFAR-10 sample."""


def _warn_every_time(message: str, category: type[Warning]) -> None:
    """warnings.warn at our caller's caller, shown on every call rather than once per code location
    (a notebook re-run should say it again). A fresh registry does that without touching the
    global filters, so a user's "error" or "ignore" filter still applies."""
    caller = sys._getframe(2)
    warnings.warn_explicit(message, category, caller.f_code.co_filename, caller.f_lineno,
                           module=caller.f_globals.get("__name__"), registry=None)


class CifarSplit(Dataset):
    """One split of CIFAR: all images as a single uint8 tensor, decoded once.

    Args:
        images: uint8 [N, 3, 32, 32] (NCHW, RGB).
        labels: integer labels [N], stored as int64.
        classes: class names, ``classes[label]``.
        transform: optional callable applied to each uint8 [3, 32, 32] image in ``__getitem__``
            (for example ``effv2_lib.augment.train_transform(...)``); without one the item is
            the uint8 image itself.
        source: where the images came from, for messages and reports.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes,
                 transform: Callable | None = None, source: str = "") -> None:
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8
                and images.ndim == 4 and images.shape[1] == 3):
            raise ValueError("images must be a uint8 tensor [N, 3, H, W], got "
                             f"{getattr(images, 'dtype', type(images))} {list(getattr(images, 'shape', []))}")
        if not isinstance(labels, torch.Tensor) or labels.shape != (len(images),):
            raise ValueError(f"labels must be a tensor [N] with N = {len(images)} images, got "
                             f"{list(getattr(labels, 'shape', [type(labels).__name__]))}")
        classes = list(classes)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(f"labels must lie in [0, {len(classes)}) for {len(classes)} classes, "
                             f"got [{int(labels.min())}, {int(labels.max())}]")
        self.images = images                 # uint8 [N, 3, 32, 32]
        self.labels = labels.long()          # int64 [N]
        self.classes = classes
        self.transform = transform
        self.source = source

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]           # uint8 [3, 32, 32]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def with_transform(self, transform: Callable | None) -> "CifarSplit":
        """The same images and labels (shared, not copied) with another per-sample transform."""
        return CifarSplit(self.images, self.labels, self.classes, transform, self.source)

    def class_counts(self) -> list[int]:
        """Number of images of each class, in class order."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def __repr__(self) -> str:
        # An absolute path names this machine's folders; the last two parts say which data it is.
        source = self.source if not os.path.isabs(self.source) else os.path.join("...", *Path(self.source).parts[-2:])
        return (f"CifarSplit({len(self)} images {list(self.images.shape[1:])} uint8, "
                f"{len(self.classes)} classes, source={source!r})")


@dataclass(frozen=True)
class CifarData:
    """Both splits of a data set and where they came from."""

    name: str                # "cifar10" or "cifar100"
    train: CifarSplit
    test: CifarSplit
    classes: list
    source: str              # a path or "torchvision:..." or "sample:..."
    is_sample: bool          # True when this is the bundled 2,500-image sample

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_cifar(name: str = "cifar10", data_dir=None, download: bool = False,
               prefer_sample: bool = False, download_timeout: float = 30.0) -> CifarData:
    """Load CIFAR-10 or CIFAR-100 from the first available source (see the module docstring).

    Args:
        name: "cifar10" or "cifar100".
        data_dir: a directory with train.npz/test.npz or an ImageFolder tree; overrides
            ``EFFV2_DATA``. Naming one that cannot be read raises instead of falling back.
        download: let torchvision download the data set into the project's data/ folder when it
            is not there yet. A failed download raises (with the reason) instead of falling back.
        prefer_sample: use the bundled CIFAR-10 sample directly (quick CPU runs, tests).
        download_timeout: seconds without network progress before a download gives up.

    Raises:
        FileNotFoundError: a named source, or every source for CIFAR-100, is missing.
        ValueError: a source exists but holds the wrong keys, shapes, dtypes or labels.
        RuntimeError: ``download=True`` and the download failed.
    """
    if name not in CLASSES:
        raise ValueError(f"name must be one of {sorted(CLASSES)}, got {name!r}")
    if prefer_sample:
        if data_dir is not None or download:
            raise ValueError("prefer_sample=True uses the bundled sample; do not also pass "
                             f"data_dir={data_dir!r} or download={download!r}")
        return _load_sample(name)

    env_dir = os.environ.get(DATA_ENV_VAR) or None
    if data_dir is not None or env_dir is not None:
        origin = _data_origin(data_dir is not None)
        return _load_directory(name, Path(data_dir if data_dir is not None else env_dir), origin)

    data = _load_torchvision(name, download, download_timeout)
    if data is not None:
        return data

    if name != "cifar10":
        raise FileNotFoundError(f"{name} not found: no data_dir, no ${DATA_ENV_VAR}, and no "
                                f"torchvision copy in {DATA_DIR} (the bundled sample is CIFAR-10 "
                                f"only). To get it: {how_to_get_data()}.")
    data = _load_sample(name)
    _warn_every_time(f"Using the bundled CIFAR-10 SAMPLE ({len(data.train)} train / {len(data.test)} "
                     f"test images from {SAMPLE_NAME}), not the full data set. For the full "
                     f"CIFAR-10: {how_to_get_data()}.", SampleDataWarning)
    return data


def _rows_per_class(split: CifarSplit, n_per_class: int, seed: int, asked_by: str | None = None) -> torch.Tensor:
    """Row numbers of `n_per_class` random images of every class, sorted (class-balanced)."""
    check_int("n_per_class", n_per_class, 1)
    counts = split.class_counts()
    if min(counts) < n_per_class:
        smallest = split.classes[counts.index(min(counts))]
        if asked_by is None:
            asked_by = ("--subset-per-class, --test-subset-per-class, --holdout-per-class or the quick check "
                        "(--smoke or EFFV2_QUICK=1, 10 per class)" if _words() is not None
                        else f"n_per_class={n_per_class}")
        raise ValueError(f"{n_per_class} images of every class were asked for (by {asked_by}), but "
                         f"{split.source or 'the data set'} has only {min(counts)} of class {smallest!r}, its "
                         f"smallest class ({len(split)} images in all): ask for at most {min(counts)} per class, "
                         f"or use a data set with at least {n_per_class} images of every class")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(len(split.classes)):
        rows = torch.nonzero(split.labels == label).flatten()
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:n_per_class]])
    return torch.cat(chosen).sort().values


def _take(split: CifarSplit, rows: torch.Tensor, note: str) -> CifarSplit:
    return CifarSplit(split.images[rows], split.labels[rows], split.classes, split.transform,
                      f"{split.source} ({note})")


def subset(split: CifarSplit, n_per_class: int, seed: int = 0, *, asked_by: str | None = None) -> CifarSplit:
    """A class-balanced random subset: `n_per_class` images of every class, in their original order.

    The images are copied, the transform is kept. Raises ValueError when a class has fewer
    than `n_per_class` images; `asked_by` names what asked for them in that message (e.g.
    "--subset-per-class", "the quick check").
    """
    return _take(split, _rows_per_class(split, n_per_class, seed, asked_by),
                 f"subset {n_per_class}/class, seed {seed}")


def hold_out(split: CifarSplit, n_per_class: int, seed: int = 0, *,
             asked_by: str | None = None) -> tuple[CifarSplit, CifarSplit]:
    """Split `split` into (training rest, held-out validation set of `n_per_class` images per class).

    Recipes are chosen on the held-out images, never on the test set: 500 per class takes a
    5,000-image validation set off CIFAR-10's 50,000 training images. The draw depends on `seed`
    alone, so every run with the same seed holds out the same images.
    """
    held = _rows_per_class(split, n_per_class, seed, asked_by)
    keep = torch.ones(len(split), dtype=torch.bool)
    keep[held] = False
    rest = torch.nonzero(keep).flatten()
    return (_take(split, rest, f"less {len(held)} held out, seed {seed}"),
            _take(split, held, f"{n_per_class}/class held out, seed {seed}"))


# --- sources ------------------------------------------------------------------------------------

def _find_directory(name: str, root: Path, origin: str) -> tuple[Path, str]:
    """Where source 1 keeps `name`: (folder, "npz" or "folders"), in `root` or `root/<name>`."""
    looked_at = []
    for folder in (root, root / name):
        npz = [folder / "train.npz", folder / "test.npz"]
        trees = [folder / "train", folder / "test"]
        looked_at += [str(p) for p in npz + trees]
        if any(p.is_file() for p in npz):
            missing = [str(p) for p in npz if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{origin}: found {npz[0].parent} but not {missing}; "
                                        "both train.npz and test.npz are needed")
            return folder, "npz"
        if all(p.is_dir() for p in trees):
            return folder, "folders"
    named = f"{origin} {root}" if origin.startswith("-") else f"{origin}={str(root)!r}"
    raise FileNotFoundError(f"{named} holds no {name}: looked for "
                            f"{', '.join(looked_at)}. To get it: {how_to_get_data()}.")


def _load_directory(name: str, root: Path, origin: str) -> CifarData:
    """Source 1: train.npz/test.npz or an ImageFolder tree in `root` or `root/<name>`."""
    folder, layout = _find_directory(name, root, origin)
    if layout == "npz":
        classes = _classes_in_npz(folder / "train.npz", name)
        train = _split_from_npz(folder / "train.npz", ("x", "y"), classes)
        test = _split_from_npz(folder / "test.npz", ("x", "y"), classes)
        return CifarData(name, train, test, classes, str(folder), is_sample=False)
    train, test = _splits_from_image_folders(folder / "train", folder / "test")
    return CifarData(name, train, test, train.classes, str(folder), is_sample=False)


def check_data_source(name: str = "cifar10", data_dir=None, *, download: bool = False, sample: bool = False,
                      full_data_only: bool = False) -> str:
    """Where `load_cifar` with these arguments would read `name` from, checked cheaply (no image is
    decoded): the source's name, or the error `load_cifar` would raise for a named directory that
    holds no data set (or .npz archives without x and y), a missing CIFAR-100, or, with
    `full_data_only`, only the bundled sample at hand. For a command that must fail before a long
    first step (e.g. a throughput measurement) rather than after it.
    """
    if name not in CLASSES:
        raise ValueError(f"name must be one of {sorted(CLASSES)}, got {name!r}")
    if sample:
        return f"sample:{SAMPLE_NAME}"
    env_dir = os.environ.get(DATA_ENV_VAR) or None
    if data_dir is not None or env_dir is not None:
        folder, layout = _find_directory(name, Path(data_dir if data_dir is not None else env_dir),
                                         _data_origin(data_dir is not None))
        if layout == "npz":
            for split in ("train", "test"):
                with _open_npz(folder / f"{split}.npz") as archive:
                    missing = [key for key in ("x", "y") if key not in archive.files]
                if missing:
                    raise file_error(folder / f"{split}.npz", f"lacks the arrays {missing} (it holds "
                                                              f"{archive.files})")
        return str(folder)
    if torchvision_folder(name).exists() or download:
        return f"torchvision:{torchvision_folder(name)}"
    if name != "cifar10":
        raise FileNotFoundError(f"{name} not found: no data directory, no ${DATA_ENV_VAR}, and no torchvision "
                                f"copy in {DATA_DIR} (the bundled sample is CIFAR-10 only). To get it: "
                                f"{how_to_get_data()}.")
    if full_data_only:
        raise FileNotFoundError(f"the full {name} data set is needed and only the bundled sample was found. "
                                f"To get it: {how_to_get_data()}.")
    return f"sample:{SAMPLE_NAME}"


def fingerprint(*splits: CifarSplit) -> str:
    """A short hash of the splits' images and labels, in order: the same data give the same string
    on every machine, any other data (another set, the sample, a subset) another. What a run
    records of its data, so that a resume cannot continue on different images."""
    digest = hashlib.blake2b(digest_size=8)
    for split in splits:
        digest.update(split.images.contiguous().numpy())  # uint8 [N, 3, 32, 32], read in place
        digest.update(split.labels.to(torch.int64).contiguous().numpy())
    return digest.hexdigest()


def fit_batch_to_data(batch_size: int, train_images: int, processes: int = 1) -> tuple[int, str | None]:
    """The batch a run can train with on `train_images` images split over `processes`, and a notice.

    A batch larger than the training set would give no step at all: the run trains with the
    largest batch the data fill (every process takes as many images), once per epoch, and the
    one-line notice says what was used and why (None when `batch_size` fits). A run records the
    batch it used.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    train_images = check_int("train_images", train_images, 0)
    processes = check_int("processes", processes, 1)
    per_process = train_images // processes
    if batch_size // processes <= per_process:
        return batch_size, None
    if per_process == 0:
        raise ValueError(f"the training set holds {train_images} images, fewer than the {processes} processes: "
                         "not one image per process")
    used = per_process * processes
    options = "--batch-size" if _words() is not None else "batch_size"
    return used, (f"NOTE: {options} {batch_size} is larger than the training set ({train_images} images"
                  + (f" over {processes} processes" if processes > 1 else "")
                  + f"); training with batch {used} instead, one step per epoch (recorded as the batch used)")


def _torchvision_dataset(name: str):
    from torchvision import datasets

    return {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]


def torchvision_folder(name: str) -> Path:
    """Where torchvision's copy of CIFAR `name` lives (or would, once downloaded) under data/."""
    return DATA_DIR / _torchvision_dataset(name).base_folder


def _load_torchvision(name: str, download: bool, timeout: float) -> CifarData | None:
    """Source 2: torchvision's CIFAR files under data/; None when absent and not downloading."""
    dataset_cls = _torchvision_dataset(name)
    folder = torchvision_folder(name)
    if not folder.exists() and not download:
        return None
    try:
        # torchvision's download has no timeout of its own; without one a machine with no route
        # to the internet can wait for minutes. The default socket timeout is restored after.
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            splits = [dataset_cls(str(DATA_DIR), train=train, download=download)
                      for train in (True, False)]
        finally:
            socket.setdefaulttimeout(previous_timeout)
    except (OSError, RuntimeError) as error:
        words = _words()
        data_option = "data_dir=DIR" if words is None else f"{words['data']} DIR"
        if download:
            raise RuntimeError(f"could not download {name} with torchvision into {DATA_DIR}: "
                               f"{error!r}. Without network access, copy train.npz/test.npz to "
                               f"this machine and pass {data_option} or set {DATA_ENV_VAR}=DIR.") from error
        again = (f"call load_cifar({name!r}, download=True)" if words is None
                 else f"rerun with {words['download']}" if words["download"] else "download it again")
        raise ValueError(f"{folder} exists but torchvision cannot read it ({error}); delete it "
                         f"and {again}, or: {how_to_get_data()}.") from error
    classes = list(splits[0].classes)
    train, test = (CifarSplit(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),
                              torch.tensor(s.targets), classes, source=f"torchvision:{folder}")
                   for s in splits)
    return CifarData(name, train, test, classes, f"torchvision:{folder}", is_sample=False)


def _load_sample(name: str) -> CifarData:
    """Source 3: the bundled class-balanced CIFAR-10 sample (see data/README.md)."""
    if name != "cifar10":
        raise ValueError(f"the bundled sample is CIFAR-10 only, got name={name!r}")
    if not SAMPLE_PATH.is_file():
        raise FileNotFoundError(f"the bundled sample {SAMPLE_PATH} is missing; reinstall effv2_lib, or in a "
                                "checkout restore it from git or regenerate it with data/make_sample.py")
    with resources.as_file(SAMPLE_PATH) as path:  # a real file even if the package is zipped
        classes = _classes_in_npz(path, name)
        source = f"sample:{SAMPLE_NAME}"  # the same on every machine, unlike the installed path
        train = _split_from_npz(path, ("x_train", "y_train"), classes, source)
        test = _split_from_npz(path, ("x_test", "y_test"), classes, source)
    return CifarData(name, train, test, classes, source, is_sample=True)


# --- readers ------------------------------------------------------------------------------------

def _open_npz(path: Path):
    return open_npz(path)


def _classes_in_npz(path: Path, name: str) -> list:
    with _open_npz(path) as archive:
        if "classes" in archive.files:
            return [str(c) for c in archive["classes"]]
    return list(CLASSES[name])


def _split_from_npz(path: Path, keys: tuple, classes: list, source: str | None = None) -> CifarSplit:
    x_key, y_key = keys
    with _open_npz(path) as archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing}: expected {x_key} uint8 "
                             f"[N, 32, 32, 3] and {y_key} integer [N], found {archive.files}")
        try:
            x, y = archive[x_key], archive[y_key]
        except Exception as error:
            raise ValueError(f"{path}: cannot read {keys} ({error!r})") from error
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"{path}: {x_key} must be uint8 [N, 32, 32, 3] (NHWC), "
                         f"got {x.dtype} {list(x.shape)}")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise ValueError(f"{path}: {y_key} must be integer labels [{len(x)}], "
                         f"got {y.dtype} {list(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"{path}: labels must lie in [0, {len(classes)}), "
                         f"got [{y.min()}, {y.max()}]")
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()   # [N, 32, 32, 3] -> [N, 3, 32, 32]
    return CifarSplit(images, torch.from_numpy(y.astype(np.int64)), classes, source=source or str(path))


def _splits_from_image_folders(train_dir: Path, test_dir: Path) -> tuple:
    """Decode an ImageFolder tree once; classes are the sorted folder names of train/."""
    from PIL import Image  # torchvision.io's decoders are deprecated from torchvision 0.29

    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{train_dir} has no class folders (expected train/<class>/*.png)")
    splits = []
    for folder in (train_dir, test_dir):
        extra = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(classes))
        if extra:
            raise ValueError(f"{folder} has class folders {extra} that {train_dir} lacks")
        images, labels = [], []
        for label, class_name in enumerate(classes):
            for path in sorted((folder / class_name).iterdir() if (folder / class_name).is_dir() else []):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(path) as file:
                        pixels = np.asarray(file.convert("RGB"))          # uint8 [H, W, 3]
                except Exception as error:
                    raise ValueError(f"cannot decode {path} ({error!r})") from error
                image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # uint8 [3, H, W]
                if image.shape != (3, 32, 32):
                    raise ValueError(f"{path} is {list(image.shape[1:])} px; CIFAR images are 32 x 32")
                images.append(image)
                labels.append(label)
        if not images:
            raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) "
                             "under its class folders")
        splits.append(CifarSplit(torch.stack(images), torch.tensor(labels), classes, source=str(folder)))
    return tuple(splits)
