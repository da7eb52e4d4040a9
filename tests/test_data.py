"""CIFAR sources tried in order, clear errors, the bundled sample, subsets."""

import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from effv2_lib import data
from effv2_lib.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    CifarSplit,
    SampleDataWarning,
    hold_out,
    load_cifar,
    subset,
)

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sample():
    return load_cifar(prefer_sample=True)


@pytest.fixture
def no_sources(tmp_path, monkeypatch):
    """No EFFV2_DATA and an empty project data/ folder (the bundled sample stays reachable)."""
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    empty = tmp_path / "project_data"
    empty.mkdir()
    monkeypatch.setattr(data, "DATA_DIR", empty)
    return empty


def write_npz_pair(folder: Path, n_train=20, n_test=10, num_classes=10, seed=0, **overrides):
    """A tiny data set in the train.npz/test.npz layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = np.arange(n) % num_classes
        content = {"x": x, "y": y, **overrides.get(split, {})}
        np.savez(folder / f"{split}.npz", **content)
        arrays[split] = content
    return arrays


# --- the bundled sample -----------------------------------------------------------------------

def test_sample_is_package_data_and_small_and_downloads_stay_out_of_the_package(tmp_path, monkeypatch):
    assert data.SAMPLE_PATH.is_file()
    assert str(data.SAMPLE_PATH).startswith(str(PROJECT / "effv2_lib"))  # importlib.resources, in the package
    assert len(data.SAMPLE_PATH.read_bytes()) <= 8 * 2**20
    assert data.DATA_DIR == PROJECT / "data"  # a source checkout downloads into its data/ folder
    # an installed package (no data/make_sample.py beside it) downloads into the user's cache
    monkeypatch.setattr(data, "__file__", str(tmp_path / "site-packages" / "effv2_lib" / "data.py"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data._download_dir() == tmp_path / "cache" / "effv2"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data._download_dir() == Path.home() / ".cache" / "effv2"


def test_importing_the_library_changes_no_global_state():
    # the libraries we build on set filters of their own when imported: take them first
    code = ("import warnings, torch, torchvision, torch._dynamo, matplotlib.pyplot, ipywidgets, tqdm.auto, torchinfo; "
            "before = list(warnings.filters); import effv2_lib, effv2_lib.train, effv2_lib.experiments, "
            "effv2_lib.widgets, effv2_lib.bench_data; after = list(warnings.filters); "
            "print(after == before, [f for f in after if f not in before])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("True"), result.stdout


def test_the_sample_warning_is_shown_on_every_fallback_and_obeys_filters(no_sources):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per code location
        for _ in range(2):  # the same call site twice: a re-run cell must warn again
            load_cifar("cifar10")
    assert [w.category for w in caught] == [SampleDataWarning] * 2
    assert caught[0].filename == __file__  # attributed to the caller of load_cifar
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampleDataWarning)
        with pytest.raises(SampleDataWarning):
            load_cifar("cifar10")


def test_sample_is_real_balanced_cifar10(sample):
    # named the same on every machine: committed outputs and summaries carry no local path
    assert sample.is_sample and sample.name == "cifar10"
    assert sample.source == "sample:effv2_lib/sample/cifar10_sample.npz"
    assert sample.classes == list(CIFAR10_CLASSES) and sample.num_classes == 10
    for split, per_class in ((sample.train, 250), (sample.test, 100)):
        assert split.images.dtype == torch.uint8 and split.images.shape == (10 * per_class, 3, 32, 32)
        assert split.labels.dtype == torch.int64
        assert split.class_counts() == [per_class] * 10
        # no duplicated images: a real draw, not a padded or repeated one
        assert len(torch.unique(split.images.flatten(1), dim=0)) == len(split)
    # the published CIFAR-10 training statistics, which random or synthetic pixels would miss
    pixels = sample.train.images.permute(1, 0, 2, 3).flatten(1).double() / 255      # [3, N*32*32]
    assert pixels.mean(1).tolist() == pytest.approx(CIFAR10_MEAN, abs=0.01)
    assert pixels.std(1).tolist() == pytest.approx(CIFAR10_STD, abs=0.01)


def test_sample_records_its_source_rows(sample):
    with np.load(data.SAMPLE_PATH) as archive:
        for split in ("train", "test"):
            rows = archive[f"rows_{split}"]
            assert len(np.unique(rows)) == len(rows) and np.all(np.diff(rows) > 0)
        assert rows.max() < 10_000


def test_fallback_to_the_sample_is_announced(no_sources):
    with pytest.warns(SampleDataWarning, match="SAMPLE"):
        loaded = load_cifar("cifar10")
    assert loaded.is_sample


def test_prefer_sample_does_not_warn_and_rejects_other_sources(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampleDataWarning)
        assert load_cifar(prefer_sample=True).is_sample
    with pytest.raises(ValueError, match="prefer_sample"):
        load_cifar(prefer_sample=True, data_dir=tmp_path)
    with pytest.raises(ValueError, match="CIFAR-10 only"):
        load_cifar("cifar100", prefer_sample=True)


def test_cifar100_never_falls_back_to_the_cifar10_sample(no_sources):
    with pytest.raises(FileNotFoundError, match="EFFV2_DATA"):
        load_cifar("cifar100")


# --- source 1: a named directory --------------------------------------------------------------

def test_data_dir_npz_is_loaded_as_nchw_uint8(no_sources, tmp_path):
    arrays = write_npz_pair(tmp_path / "mine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampleDataWarning)
        loaded = load_cifar(data_dir=tmp_path / "mine")
    assert not loaded.is_sample and loaded.source == str(tmp_path / "mine")
    x = arrays["train"]["x"]
    assert loaded.train.images.shape == (20, 3, 32, 32) and loaded.train.images.dtype == torch.uint8
    assert torch.equal(loaded.train.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert loaded.train.labels.dtype == torch.int64
    assert loaded.train.labels.tolist() == arrays["train"]["y"].tolist()
    assert len(loaded.test) == 10 and loaded.classes == list(CIFAR10_CLASSES)


def test_env_var_is_used_and_data_dir_overrides_it(no_sources, tmp_path, monkeypatch):
    write_npz_pair(tmp_path / "env", n_train=30)
    write_npz_pair(tmp_path / "arg", n_train=40)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "env"))
    assert len(load_cifar().train) == 30
    assert len(load_cifar(data_dir=tmp_path / "arg").train) == 40


def test_a_subfolder_named_after_the_data_set_is_found(no_sources, tmp_path, monkeypatch):
    write_npz_pair(tmp_path / "root" / "cifar100", num_classes=100, n_train=100)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "root"))
    loaded = load_cifar("cifar100")
    assert loaded.classes == list(CIFAR100_CLASSES) and len(loaded.train) == 100


def test_image_folder_tree(no_sources, tmp_path):
    generator = torch.Generator().manual_seed(0)
    written = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for name in ("cat", "airplane"):                       # classes come out sorted
            folder = tmp_path / "tree" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
                written[(split, name, i)] = image
        (tmp_path / "tree" / split / "airplane" / "notes.txt").write_text("not an image")
    loaded = load_cifar(data_dir=tmp_path / "tree")
    assert loaded.classes == ["airplane", "cat"]
    assert loaded.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and len(loaded.test) == 4
    assert torch.equal(loaded.train.images[3], written[("train", "cat", 0)])   # PNG is lossless


def test_named_directory_without_data_is_an_error_never_the_sample(no_sources, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"train\.npz.*EFFV2_DATA.*download=True"):
        load_cifar(data_dir=tmp_path / "missing")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"\$EFFV2_DATA"):
        load_cifar()


def test_half_a_pair_is_an_error(no_sources, tmp_path):
    write_npz_pair(tmp_path / "half")
    (tmp_path / "half" / "test.npz").unlink()
    with pytest.raises(FileNotFoundError, match="test.npz"):
        load_cifar(data_dir=tmp_path / "half")


@pytest.mark.parametrize("overrides, message", [
    ({"train": {"x": np.zeros((4, 32, 32, 3), np.float32)}}, "uint8"),
    ({"train": {"x": np.zeros((4, 3, 32, 32), np.uint8)}}, r"\[N, 32, 32, 3\]"),
    ({"train": {"y": np.zeros(7, np.int64)}}, "integer labels"),
    ({"train": {"y": np.full(20, 10)}}, r"\[0, 10\)"),
    ({"test": {"y": np.zeros(10, np.float32)}}, "integer labels"),
])
def test_corrupt_arrays_are_errors(no_sources, tmp_path, overrides, message):
    write_npz_pair(tmp_path / "bad", **overrides)
    with pytest.raises(ValueError, match=message):
        load_cifar(data_dir=tmp_path / "bad")


def test_missing_keys_and_unreadable_files_are_errors(no_sources, tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    np.savez(folder / "train.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    np.savez(folder / "test.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"lacks the arrays \['x', 'y'\]"):
        load_cifar(data_dir=folder)
    (folder / "train.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_cifar(data_dir=folder)


def test_bad_name_is_an_error():
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("mnist")


# --- source 2: torchvision under data/ --------------------------------------------------------

def test_torchvision_source_is_tried_before_the_sample(no_sources):
    (no_sources / torchvision.datasets.CIFAR10.base_folder).mkdir()    # present but empty
    with pytest.raises(ValueError, match="cifar-10-batches-py.*download=True"):
        load_cifar("cifar10")


def test_failed_download_explains_and_does_not_fall_back(no_sources, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(RuntimeError, match="could not download.*data_dir"):
        load_cifar("cifar10", download=True)


# --- CifarSplit and subset --------------------------------------------------------------------

def test_split_applies_its_transform_per_item_and_shares_storage(sample):
    plain = sample.train[0]
    assert plain[0].dtype == torch.uint8 and isinstance(plain[1], int)
    halved = sample.train.with_transform(lambda image: image // 2)
    assert torch.equal(halved[0][0], plain[0] // 2) and halved[0][1] == plain[1]
    assert halved.images.data_ptr() == sample.train.images.data_ptr()


def test_split_validates_its_inputs():
    with pytest.raises(ValueError, match="uint8"):
        CifarSplit(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(ValueError, match="labels"):
        CifarSplit(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 3]), ["a", "b"])


def test_subset_is_balanced_ordered_and_seeded(sample):
    small = subset(sample.train, 7, seed=1)
    assert small.class_counts() == [7] * 10
    assert torch.equal(small.images, subset(sample.train, 7, seed=1).images)
    assert not torch.equal(small.images, subset(sample.train, 7, seed=2).images)
    # rows keep their original order: the subset is a sub-sequence of the split
    positions = [int(torch.nonzero((sample.train.images == image).flatten(1).all(1))[0])
                 for image in small.images[:20]]
    assert positions == sorted(positions)
    with pytest.raises(ValueError, match="smallest class"):
        subset(sample.train, 251)
    with pytest.raises(TypeError, match="n_per_class"):
        subset(sample.train, 2.5)


def test_hold_out_splits_off_a_balanced_disjoint_validation_set(sample):
    rest, held = hold_out(sample.train, 20, seed=0)
    assert held.class_counts() == [20] * 10
    assert len(rest) + len(held) == len(sample.train)
    assert [a + b for a, b in zip(rest.class_counts(), held.class_counts(), strict=True)] == sample.train.class_counts()
    # no image is in both: every training image lands in exactly one of the two
    flat = lambda split: {bytes(image.flatten().tolist()) for image in split.images}  # noqa: E731
    assert not flat(rest) & flat(held)
    again_rest, again_held = hold_out(sample.train, 20, seed=0)
    assert torch.equal(again_held.images, held.images) and torch.equal(again_rest.labels, rest.labels)
    assert not torch.equal(hold_out(sample.train, 20, seed=1)[1].images, held.images)
    with pytest.raises(ValueError, match="smallest class"):
        hold_out(sample.train, 251)


# --- data/make_sample.py ----------------------------------------------------------------------

def test_make_sample_script_is_deterministic_and_loadable(tmp_path):
    write_npz_pair(tmp_path / "src", n_train=60, n_test=30)
    outputs = []
    for name in ("a.npz", "b.npz"):
        subprocess.run([sys.executable, str(PROJECT / "data" / "make_sample.py"), str(tmp_path / "src"),
                        "--out", str(tmp_path / name), "--train-per-class", "4",
                        "--test-per-class", "2"], check=True, capture_output=True)
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    split = data._split_from_npz(tmp_path / "a.npz", ("x_train", "y_train"), list(CIFAR10_CLASSES))
    assert split.class_counts() == [4] * 10
