"""Compare the kit's automl RandAugment ops with google/automl's own, as TensorFlow runs them (#19).

`effv2_lib.randaugment.AUTOML_OPS` re-implements the op table of the official EfficientNetV2 code
(google/automl, ``efficientnetv2/autoaugment.py``) with torchvision's functional ops. This script
runs autoaugment.py's op functions under TensorFlow and ours under PyTorch on the same images, op
by op, at levels 2, 5, 10, 15, 20 and 25 (both signs for the signed ops), and prints how far the
outputs differ: the largest and mean absolute difference in grey levels (0-255) and the fraction
of pixel values that differ.

TensorFlow and PyTorch live in two environments, so the script works in two steps:

1. ``--tf-side``, run by a Python that has TensorFlow (no torch needed): imports autoaugment.py
   from the path given (it is not part of this repository), calls its op functions with the
   arguments its ``level_to_arg`` makes, and writes inputs and outputs to an npz file;
2. the comparison, run by the project's Python: applies ``AUTOML_OPS`` to the same images with
   the arguments of ``automl_op_table`` and compares.

Without ``--tf-side`` and with ``--tf-python`` the script runs step 1 itself under that Python::

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu   # not a project dependency
    git clone https://github.com/google/automl   # or any copy of efficientnetv2/autoaugment.py
    .venv/bin/python scripts/compare_tf_randaugment.py --autoaugment automl/efficientnetv2/autoaugment.py \\
        --tf-python /tmp/tfvenv/bin/python --data /path/to/cifar10/test.npz

autoaugment.py imports ``tensorflow_addons``, which no longer installs with current TensorFlow; its
three image ops are replaced here by stand-ins with tensorflow_addons' semantics (`_TfaImage`),
written on TensorFlow's own ``ImageProjectiveTransformV3`` kernel, which tensorflow_addons called.

Images: the first ``--images`` (64) test images of the npz given by ``--data`` (keys ``x`` or
``x_test``, uint8 [N, 32, 32, 3]; default: the kit's bundled sample), at 32 px and upscaled
(nearest, 7x) to 224 px, the ImageNet size autoaugment.py's pixel constants were written for.
Translate and Cutout get the kit's argument (automl's constant scaled by side / 224, equal to
automl's own at 224 px up to the kit's cap of half the side on translations) on both sides, so
that the ops themselves are compared; the rows marked "automl's px" give TensorFlow automl's
absolute constants at 32 px instead, the size of that documented departure. Cutout's centre is
random: the TensorFlow side records the centres it drew and ours cuts around the same ones
(`effv2_lib.randaugment.cutout_at`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

LEVELS = (2, 5, 10, 15, 20, 25)
SIZES = (32, 224)
REFERENCE_SIZE = 224                  # effv2_lib.randaugment.AUTOML_REFERENCE_SIZE
TRANSLATE_CONST, CUTOUT_CONST = 100, 40   # distort_image_with_randaugment's hparams
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
SCALED = ("TranslateX", "TranslateY", "Cutout")   # pixel constants the kit scales with the side
ENV_VAR = "AUTOML_AUTOAUGMENT"        # where autoaugment.py is, if --autoaugment is not given
BUNDLED_SAMPLE = Path(__file__).resolve().parents[1] / "effv2_lib" / "sample" / "cifar10_sample.npz"


def load_images(path: Path, count: int) -> np.ndarray:
    """The first `count` test images of a CIFAR npz: uint8 [count, 32, 32, 3]."""
    with np.load(path) as data:
        key = "x" if "x" in data.files else "x_test"
        images = data[key][:count]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 [N, H, W, 3] images under {key!r}, got "
                         f"{images.dtype} {list(images.shape)}")
    return images


def scaled_argument(op: str, level: float, size: int) -> float:
    """The kit's Translate / Cutout argument: automl's constant read at 224 px, scaled to `size`
    (translation capped at half the side, as `effv2_lib.randaugment.automl_op_table` does)."""
    if op == "Cutout":
        return float(int(level / 10 * CUTOUT_CONST * size / REFERENCE_SIZE))
    return min(level / 10 * TRANSLATE_CONST * size / REFERENCE_SIZE, size / 2)


# --- step 1: TensorFlow ---------------------------------------------------------------------------

def _tfa_stand_in(tf) -> types.ModuleType:
    """``tensorflow_addons.image`` as autoaugment.py uses it: rotate, translate, transform.

    tensorflow_addons (0.x, ``image/transform_ops.py`` and ``translate_ops.py``) applies a
    projective transform [a0, a1, a2, b0, b1, b2, c0, c1] that maps each *output* pixel (x, y),
    pixel centres at integer coordinates, to the input point ((a0 x + a1 y + a2) / k,
    (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1, reads it with nearest interpolation and
    fills points outside the image with 0. rotate(angle) turns counterclockwise about the image
    centre ((W - 1) / 2, (H - 1) / 2); translate([dx, dy]) moves the content by +dx, +dy.
    """
    def transform(images, transforms, interpolation="nearest"):
        images = tf.convert_to_tensor(images)
        batch = images[None] if images.shape.rank == 3 else images
        flat = tf.reshape(tf.cast(tf.convert_to_tensor(transforms), tf.float32), [-1, 8])
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=batch, transforms=flat, output_shape=tf.shape(batch)[1:3], fill_value=0.0,
            interpolation=interpolation.upper(), fill_mode="CONSTANT")
        return out[0] if images.shape.rank == 3 else out

    def rotate(images, angles, interpolation="nearest"):
        height = tf.cast(tf.shape(images)[-3], tf.float32)
        width = tf.cast(tf.shape(images)[-2], tf.float32)
        angle = tf.cast(angles, tf.float32)
        cos, sin = tf.math.cos(angle), tf.math.sin(angle)
        # the input point of an output pixel: rotation by -angle about the image centre
        x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
        y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
        return transform(images, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]), interpolation)

    def translate(images, translations, interpolation="nearest"):
        dx, dy = (tf.cast(t, tf.float32) for t in translations)
        return transform(images, tf.stack([1.0, 0.0, -dx, 0.0, 1.0, -dy, 0.0, 0.0]), interpolation)

    module = types.ModuleType("tensorflow_addons.image")
    module.transform, module.rotate, module.translate = transform, rotate, translate
    return module


def _import_autoaugment(path: Path, tf):
    """autoaugment.py as a module, with the stand-ins for its two imports that do not install."""
    addons = types.ModuleType("tensorflow_addons")
    addons.image = _tfa_stand_in(tf)
    hparams = types.ModuleType("hparams")

    class Config:   # autoaugment.py only reads attributes given as keywords
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    hparams.Config = Config
    sys.modules.update({"tensorflow_addons": addons, "tensorflow_addons.image": addons.image, "hparams": hparams})
    spec = importlib.util.spec_from_file_location("autoaugment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tensorflow(autoaugment_path: Path, data: Path, count: int, out: Path) -> None:
    """Step 1: every op of automl's RandAugment table at every level and sign, written to `out`."""
    import tensorflow as tf

    aa = _import_autoaugment(autoaugment_path, tf)
    level_to_arg = aa.level_to_arg(aa.hparams.Config(cutout_const=CUTOUT_CONST, translate_const=TRANSLATE_CONST))
    replace = [128] * 3
    drawn = []   # Cutout's centres, recorded as autoaugment.py draws them
    draw = tf.compat.v1.random_uniform

    def recording_draw(*args, **kwargs):
        value = draw(*args, **kwargs)
        drawn.append(int(value))
        return value

    ops = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
           "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd"]
    base = load_images(data, count)
    results = {"tf_version": np.array(tf.__version__), "autoaugment": np.array(str(autoaugment_path))}
    for size in SIZES:
        images = np.repeat(np.repeat(base, size // 32, axis=1), size // 32, axis=2)   # nearest upscale
        results[f"input/{size}"] = images
        for op in ops:
            func = aa.NAME_TO_FUNC[op]
            for level in LEVELS:
                args = level_to_arg[op](float(level))   # () for the ops without an argument
                variants = {"": args}
                if op in SCALED:
                    variants = {"": (scaled_argument(op, level, size),)}
                    if size == 32:
                        variants["automl-px"] = tuple(abs(float(a)) for a in args)
                if op == "Cutout":
                    variants = {k: (int(v[0]),) for k, v in variants.items()}
                for variant, variant_args in variants.items():
                    for sign in ((1, -1) if op in SIGNED else (1,)):
                        call_args = variant_args
                        if op in SIGNED:   # level_to_arg drew a random sign: make it explicit
                            call_args = (sign * abs(float(variant_args[0])),)
                        if "replace" in aa.inspect.getfullargspec(func)[0]:
                            call_args = (*call_args, replace)
                        outputs, centres = [], []
                        for image in images:
                            drawn.clear()
                            tf.compat.v1.random_uniform = recording_draw
                            try:
                                outputs.append(func(tf.constant(image), *call_args).numpy())
                            finally:
                                tf.compat.v1.random_uniform = draw
                            if op == "Cutout":
                                centres.append(list(drawn))
                        key = f"{size}/{op}/{level}/{sign}/{variant}"
                        results[key] = np.stack(outputs)
                        results[f"arg/{key}"] = np.array([float(call_args[0]) if call_args and
                                                          not isinstance(call_args[0], list) else 0.0])
                        if op == "Cutout":
                            results[f"centres/{key}"] = np.array(centres)   # [N, 2]: row, column
        # graph mode (tf.function) converts the Python int as eager mode does: Solarize and Posterize
        for op in ("Solarize", "Posterize"):
            func, graph = aa.NAME_TO_FUNC[op], tf.function(aa.NAME_TO_FUNC[op])
            batch = tf.constant(images)
            results[f"graph_equals_eager/{size}/{op}"] = np.array(all(
                np.array_equal(graph(batch, level_to_arg[op](float(level))[0]).numpy(),
                               func(batch, level_to_arg[op](float(level))[0]).numpy()) for level in LEVELS))
    np.savez_compressed(out, **results)


# --- step 2: ours, and the comparison ------------------------------------------------------------

def compare(npz: Path) -> str:
    """Step 2: the kit's ops on the same images; a plain-text table of the differences."""
    import torch
    from torchvision.transforms import v2

    from effv2_lib.randaugment import AUTOML_OPS, RANDAUG_FILL, automl_op_table, cutout_at

    nearest = v2.InterpolationMode.NEAREST
    stored = np.load(npz)
    lines = [f"TensorFlow {stored['tf_version']}, torch {torch.__version__}; "
             f"{len(stored['input/32'])} images; each cell: max |diff| / mean |diff| (grey levels) / "
             f"share of pixel values that differ"]
    header = f"{'op':<24}{'px':>4}  " + "".join(f"{'level ' + str(level):<22}" for level in LEVELS)
    lines += [header, "-" * len(header)]
    rows = sorted({(key.split("/")[0], key.split("/")[1], key.split("/")[4]) for key in stored.files
                   if key.count("/") == 4 and key.split("/")[0].isdigit()},
                  key=lambda r: (int(r[0]), list(AUTOML_OPS).index(r[1]), r[2]))
    for size, op, variant in rows:
        images = torch.from_numpy(stored[f"input/{size}"]).permute(0, 3, 1, 2).contiguous()   # [N, 3, H, W]
        cells = []
        for level in LEVELS:
            table = {name: m for name, m, _ in automl_op_table(level, int(size), int(size))}
            theirs_all, ours_all = [], []
            for sign in ((1, -1) if op in SIGNED else (1,)):
                key = f"{size}/{op}/{level}/{sign}/{variant}"
                if key not in stored.files:
                    continue
                theirs = torch.from_numpy(stored[key]).permute(0, 3, 1, 2)
                if op == "Cutout":
                    centres = torch.from_numpy(stored[f"centres/{key}"])   # the centres TF drew
                    ours = cutout_at(images, int(table[op]), RANDAUG_FILL, centres[:, 0], centres[:, 1])
                else:
                    ours = AUTOML_OPS[op](images, sign * table[op], RANDAUG_FILL, nearest, None)
                theirs_all.append(theirs)
                ours_all.append(ours)
            diff = (torch.cat(theirs_all).int() - torch.cat(ours_all).int()).abs()
            cells.append(f"{int(diff.max()):>3} / {diff.float().mean().item():5.2f} / "
                         f"{(diff > 0).float().mean().item():6.1%}")
        label = op + (" (automl's px)" if variant else "")
        lines.append(f"{label:<24}{size:>4}  " + "".join(f"{cell:<22}" for cell in cells))
    graph = [key.split("/", 1)[1] for key in stored.files if key.startswith("graph_equals_eager/")]
    lines.append("graph mode (tf.function) gives the eager outputs for "
                 + ", ".join(f"{k}: {bool(stored['graph_equals_eager/' + k])}" for k in graph))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--autoaugment", type=Path, default=os.environ.get(ENV_VAR),
                        help=f"path to google/automl's efficientnetv2/autoaugment.py (or ${ENV_VAR})")
    parser.add_argument("--data", type=Path, default=BUNDLED_SAMPLE,
                        help="CIFAR npz with uint8 images under 'x' or 'x_test' (default: the bundled sample)")
    parser.add_argument("--images", type=int, default=64, help="how many test images (default 64)")
    parser.add_argument("--tf-python", help="a Python with TensorFlow, to run step 1 in")
    parser.add_argument("--tf-side", action="store_true", help="run step 1 only (in the TensorFlow Python)")
    parser.add_argument("--outputs", type=Path, default=Path("/tmp/compare_tf_randaugment.npz"),
                        help="npz that step 1 writes and step 2 reads")
    args = parser.parse_args(argv)
    if args.tf_side or args.tf_python:
        if args.autoaugment is None or not Path(args.autoaugment).is_file():
            parser.error(f"--autoaugment (or ${ENV_VAR}) must name autoaugment.py, got {args.autoaugment}")
    if args.tf_side:
        run_tensorflow(Path(args.autoaugment).resolve(), args.data, args.images, args.outputs)
        return 0
    if args.tf_python:
        subprocess.run([args.tf_python, __file__, "--tf-side", "--autoaugment", str(args.autoaugment),
                        "--data", str(args.data), "--images", str(args.images), "--outputs", str(args.outputs)],
                       check=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(f"{datetime.date.today().isoformat()}: python {' '.join(sys.argv)}")
    print(compare(args.outputs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
