"""Sample data: calibration sets, parity inputs, labelled evaluation data.

A *sample set* is a tuple with one array per model input, each ``(N, *input_shape[1:])``: the
samples stacked on axis 0. ``batches`` cuts it into tuples shaped exactly like the model's
inputs. Files are .npy, .npz (arrays by input name or in order; ``x``/``y`` for labelled data)
or a folder of images; nothing is ever unpickled.

A run's data is resolved once, up front, by :func:`resolve_inputs` into one :class:`RunInputs`
that every stage (compress, convert, validate, explain) is handed: none of them reads a file or
draws a sample itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.core.errors import UsageError, one_line
from edgex.core.loading import load_arrays, synthetic_input
from edgex.core.settings import ConvertSettings
from edgex.core.types import ReferenceModel, TensorSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SMALL_CALIBRATION = 100

SampleSet = tuple[np.ndarray, ...]


def _per_sample(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(spec.shape[1:])


def check_samples(arrays: Sequence[np.ndarray], inputs: Sequence[TensorSpec], what: str) -> SampleSet:
    """Validate that ``arrays`` stack samples for ``inputs``; a one-line error otherwise."""
    if len(arrays) != len(inputs):
        raise UsageError(f"{what} holds {len(arrays)} arrays but the model takes {len(inputs)} inputs ({', '.join(s.name for s in inputs)})")
    checked = []
    for array, spec in zip(arrays, inputs):
        array = np.asarray(array)
        if tuple(array.shape) == spec.shape:
            pass  # one batch exactly as the model takes it
        elif tuple(array.shape[1:]) != _per_sample(spec):
            raise UsageError(
                f"{what}: samples of shape {tuple(array.shape[1:])} (array {tuple(array.shape)}) do not fit "
                f"input {spec.name!r}, which takes {_per_sample(spec)} per sample (model input {spec.shape})"
            )
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            array = array.astype(spec.dtype, copy=False)
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            # named here, or the model's NaN outputs would be blamed on the model or the artifact
            nans, infs = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            found = " and ".join(f"{n} {kind}" for n, kind in ((nans, "NaN"), (infs, "Inf")) if n)
            raise UsageError(f"{what}: input {spec.name!r} holds {found} values; give finite numbers")
        checked.append(array)
    counts = {len(a) for a in checked}
    if len(counts) != 1:
        raise UsageError(f"{what}: the inputs hold different numbers of samples ({sorted(counts)})")
    return tuple(checked)


#: files an operating system leaves in a folder of pictures; skipped like hidden files
OS_LEFTOVERS = ("Thumbs.db", "desktop.ini")


def _folder_files(folder: Path, where: str) -> tuple[list[Path], list[Path]]:
    """The images and the .npy files in ``folder`` (not recursive), sorted by name. Hidden
    entries (``.DS_Store``, ``.ipynb_checkpoints``) and an OS's thumbnails files are skipped;
    anything else is refused naming it: a file edgex would pass over unread (a ``.tif``, a
    subfolder of images, notes) is data the user may think is used."""
    images, npys, others = [], [], []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise UsageError(f"{where}: cannot list the folder ({one_line(exc)})") from exc
    for entry in entries:
        if entry.name.startswith(".") or entry.name in OS_LEFTOVERS:
            continue
        suffix = entry.suffix.lower()
        if entry.is_file() and suffix in IMAGE_SUFFIXES:
            images.append(entry)
        elif entry.is_file() and suffix == ".npy":
            npys.append(entry)
        else:
            others.append(entry)
    if others:
        first = others[0]
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        kind = "a folder" if first.is_dir() else "neither an image nor a .npy file"
        raise UsageError(
            f"{where}: {first} is {kind}{more}; move it out of the folder (every file in a data folder "
            f"is used, and it holds only images ({', '.join(IMAGE_SUFFIXES)}) or only .npy files)"
        )
    if images and npys:
        raise UsageError(f"{where} holds both images ({images[0].name} ...) and .npy files ({npys[0].name} ...); keep one kind in the folder")
    if not images and not npys:
        raise UsageError(f"{where} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no .npy files")
    return images, npys


def _read_image(file: Path, mode: str, size: tuple[int, int], where: str) -> np.ndarray:
    """One image, decoded whole, as float32 pixels in [0, 1]; a file that does not decode (not
    an image, truncated, a PNG whose checksums do not match) is refused naming it."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            image.verify()  # PNG: every chunk's CRC; the decoder below finds truncation
        with Image.open(file) as image:
            image.load()
            image = image.convert(mode).resize(size)
            return np.asarray(image, dtype=np.float32) / 255.0
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on a bad file
        raise UsageError(f"{where}: cannot read {file} as an image ({one_line(exc)}): it is truncated, corrupt or not an image; replace it or remove it from the folder") from exc


def _load_images(files: Sequence[Path], spec: TensorSpec, where: str) -> np.ndarray:
    if len(spec.shape) != 4:
        raise UsageError(f"{where}: a folder of images fits a 4-D image input, but {spec.name!r} is {spec.shape}")
    channels_first = spec.shape[1] in (1, 3)
    channels = spec.shape[1] if channels_first else spec.shape[3]
    height, width = (spec.shape[2], spec.shape[3]) if channels_first else (spec.shape[1], spec.shape[2])
    if channels not in (1, 3):
        raise UsageError(f"{where}: input {spec.name!r} {spec.shape} is not a 1- or 3-channel image")
    images = []
    for file in files:
        pixels = _read_image(file, "L" if channels == 1 else "RGB", (width, height), where).reshape(height, width, channels)
        images.append(pixels.transpose(2, 0, 1) if channels_first else pixels)
    return np.stack(images).astype(spec.dtype)


def _load_npys(files: Sequence[Path], spec: TensorSpec, where: str) -> np.ndarray:
    """One sample (or one batch shaped like the input) per .npy file, stacked."""
    arrays = []
    for file in files:
        try:
            arrays.append(np.load(file, allow_pickle=False))
        except Exception as exc:  # truncated, not .npy, or an object array (never unpickled)
            raise UsageError(f"{where}: cannot read {file} as .npy ({one_line(exc)}); replace it or remove it from the folder") from exc
        if arrays[-1].shape != arrays[0].shape:
            raise UsageError(
                f"{where}: {file} holds an array of shape {arrays[-1].shape} but {files[0].name} one of {arrays[0].shape}; "
                "every .npy file in the folder holds one sample of the same shape"
            )
    stacked = np.stack(arrays)
    return stacked.reshape(len(stacked), *spec.shape[1:]) if stacked[0].shape == spec.shape else stacked


def load_samples(path: Path, inputs: Sequence[TensorSpec], what: str) -> SampleSet:
    """A sample set from an .npy/.npz file or a folder of images or of .npy files (only one
    kind, and nothing else but hidden files: see :func:`_folder_files`)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} not found: {path}")
    if path.is_dir():
        if len(inputs) != 1:
            raise UsageError(f"{what}: a folder fits a single-input model; this one takes {len(inputs)} inputs (use .npz)")
        where = f"{what} {path}"
        images, npys = _folder_files(path, where)
        arrays = [_load_npys(npys, inputs[0], where) if npys else _load_images(images, inputs[0], where)]
        return check_samples(arrays, inputs, where)
    named = dict(load_arrays(path, what))
    if "x" in named and len(inputs) == 1:
        arrays = [named["x"]]
    elif all(spec.name in named for spec in inputs):
        arrays = [named[spec.name] for spec in inputs]
    else:
        arrays = list(named.values())
    return check_samples(arrays, inputs, f"{what} {path}")


def load_labelled(path: Path, inputs: Sequence[TensorSpec], what: str) -> tuple[SampleSet, np.ndarray | None]:
    """Samples plus labels ``y`` when the .npz holds them."""
    samples = load_samples(path, inputs, what)
    labels = None
    if Path(path).suffix == ".npz":
        named = dict(load_arrays(Path(path), what))
        if "y" in named:
            labels = np.asarray(named["y"])
            if len(labels) != len(samples[0]):
                raise UsageError(f"{what} {path}: {len(labels)} labels for {len(samples[0])} samples")
    return samples, labels


def label_batches(labels: np.ndarray, samples: SampleSet, inputs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """``labels`` (one per sample of ``samples``) cut as :func:`batches` cuts the samples."""
    batch = inputs[0].shape[0] if inputs and inputs[0].shape else 1
    if all(tuple(a.shape) == s.shape for a, s in zip(samples, inputs)):
        return [labels]
    return [labels[i * batch : (i + 1) * batch] for i in range(count(samples) // batch)]


def count(samples: SampleSet) -> int:
    return int(len(samples[0]))


def batches(samples: SampleSet, inputs: Sequence[TensorSpec]) -> list[tuple[np.ndarray, ...]]:
    """Cut a sample set into tuples shaped exactly like the model's inputs (a ragged tail is dropped)."""
    batch = inputs[0].shape[0] if inputs and inputs[0].shape else 1
    if all(tuple(a.shape) == s.shape for a, s in zip(samples, inputs)):
        return [tuple(samples)]
    n = count(samples) // batch
    return [tuple(np.ascontiguousarray(a[i * batch : (i + 1) * batch]) for a in samples) for i in range(n)]


def take(samples: SampleSet, n: int, seed: int) -> SampleSet:
    """``n`` samples drawn without replacement (all of them, in order, when there are fewer)."""
    total = count(samples)
    if total <= n:
        return samples
    index = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    return tuple(a[index] for a in samples)


def hold_out(samples: SampleSet, n: int, seed: int) -> tuple[SampleSet, SampleSet | None]:
    """``n`` rows drawn as :func:`take` draws them (at most half of the set), and the rest; the
    rest is None when a set of one row cannot be split."""
    total = count(samples)
    if total < 2:
        return samples, None
    held = min(n, total // 2)
    index = np.sort(np.random.default_rng(seed).choice(total, size=held, replace=False))
    rest = np.setdiff1d(np.arange(total), index)
    return tuple(a[index] for a in samples), tuple(a[rest] for a in samples)


def synthetic_samples(inputs: Sequence[TensorSpec], n: int, seed: int) -> SampleSet:
    """``n`` seeded random samples (standard normal floats)."""
    rng = np.random.default_rng(seed)
    stacked = []
    for spec in inputs:
        sample = TensorSpec(spec.name, (n * spec.shape[0], *spec.shape[1:]), spec.dtype)
        stacked.append(synthetic_input(sample, rng))
    return tuple(stacked)


def calibration_warnings(calibration: SampleSet, reference: SampleSet | None, inputs: Sequence[TensorSpec]) -> list[str]:
    """Warnings about a calibration set that may give poor int8 scales."""
    warnings = []
    if count(calibration) < SMALL_CALIBRATION:
        warnings.append(
            f"calibration has {count(calibration)} samples (< {SMALL_CALIBRATION}): int8 ranges may miss "
            "real inputs; pass more with --calibration"
        )
    for index, (array, spec) in enumerate(zip(calibration, inputs)):
        if not np.issubdtype(array.dtype, np.floating):
            continue
        low, high = float(array.min()), float(array.max())
        if high - low <= 1e-12:
            warnings.append(f"calibration input {spec.name!r} is constant ({low:g}): int8 scales will be degenerate")
            continue
        if reference is not None:
            ref_low, ref_high = float(reference[index].min()), float(reference[index].max())
            width, ref_width = high - low, ref_high - ref_low
            if ref_width > 4 * width or ref_low < low - width or ref_high > high + width:
                warnings.append(
                    f"calibration input {spec.name!r} spans [{low:.3g}, {high:.3g}] but the parity inputs span "
                    f"[{ref_low:.3g}, {ref_high:.3g}]: the calibration looks unrepresentative"
                )
    return warnings


# --------------------------------------------------------------------------- a run's inputs, resolved once

#: random calibration samples drawn when an int8 target has no calibration data
SYNTHETIC_CALIBRATION = 128

Batch = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class LabelledSet:
    """Samples with their labels (None where there are none) and where they came from."""

    samples: SampleSet
    labels: np.ndarray | None
    source: str


@dataclass(frozen=True)
class RunInputs:
    """Every piece of data a run uses, validated against the model's inputs."""

    #: the model's inputs, which every sample set here fits
    specs: tuple[TensorSpec, ...]
    #: parity inputs, cut into batches shaped like the model's inputs
    parity: list[Batch]
    parity_source: str
    #: the parity inputs are seeded random numbers, not data (nobody gave any)
    parity_synthetic: bool
    #: int8 calibration (None when no int8 target runs and the user gave none)
    calibration: SampleSet | None
    calibration_source: str
    #: labelled held-out data for task accuracy (``--eval-data`` or the model's own)
    evaluation: LabelledSet | None
    #: data for recovery methods (distillation): ``--distill-data``, else the calibration data
    recovery: LabelledSet | None
    warnings: tuple[str, ...] = ()
    #: labels of the calibration samples, where ``--calibration`` is an .npz holding ``y``: a
    #: converter may tune on them (accuracy-controlled int8); never the evaluation labels
    calibration_labels: np.ndarray | None = None

    @property
    def calibration_batches(self) -> tuple[Batch, ...] | None:
        return None if self.calibration is None else tuple(batches(self.calibration, self.specs))

    def simulation_calibration(self) -> tuple[list[Batch], str]:
        """What edgex's simulated int8 reference calibrates on, and a sentence saying what it is:
        the calibration data, else the parity inputs when they are real data. Raises
        :class:`UsageError` when there are none (seeded random parity inputs)."""
        if self.calibration is not None:
            return list(self.calibration_batches or ()), f"calibrated on {self.calibration_source}"
        if not self.parity_synthetic:
            return list(self.parity), f"calibrated on the parity inputs ({self.parity_source}): no --calibration given"
        raise UsageError(
            "judging an int8 artifact needs real inputs: pass --calibration (the data it was quantized with) or "
            "--example-inputs; standard-normal samples fall outside the ranges it was calibrated to"
        )

    @property
    def calibration_label_batches(self) -> tuple[np.ndarray, ...] | None:
        """The calibration labels, one array per batch of :attr:`calibration_batches`."""
        if self.calibration is None or self.calibration_labels is None:
            return None
        return tuple(label_batches(self.calibration_labels, self.calibration, self.specs))

    @property
    def eval_batches(self) -> list[Batch]:
        return [] if self.evaluation is None else batches(self.evaluation.samples, self.specs)

    @property
    def eval_labels(self) -> np.ndarray | None:
        return None if self.evaluation is None else self.evaluation.labels


def as_samples(value: Any, model: ReferenceModel, what: str) -> SampleSet | None:
    """A path (.npy/.npz/image folder), an array, a tensor or a sequence of them, as a checked
    sample set for ``model``'s inputs; None stays None."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return load_samples(Path(value), model.inputs, what)
    arrays = [np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    return check_samples(arrays, model.inputs, what)


def as_labelled(value: Any, model: ReferenceModel) -> LabelledSet | None:
    """``--eval-data`` (an .npz path with x and y, or a pair (x, y)), else the model's own
    labelled data, as a checked labelled set; None when there is neither."""
    if isinstance(value, (str, Path)):
        samples, labels = load_labelled(Path(value), model.inputs, "--eval-data")
        if labels is None:
            raise UsageError(f"--eval-data {value} holds no labels: save it as .npz with arrays x and y")
        return LabelledSet(samples, labels, f"--eval-data {value}")
    if value is not None:
        x, y = value
        return LabelledSet(check_samples([np.asarray(x)], model.inputs, "eval data"), np.asarray(y), "eval data (x, y)")
    if model.eval_data is not None:
        samples = check_samples([model.eval_data[0]], model.inputs, "the model's shipped eval data")
        return LabelledSet(samples, np.asarray(model.eval_data[1]), "the model's shipped eval data")
    return None


def _recovery(settings: ConvertSettings, model: ReferenceModel, calibration: SampleSet | None, calibration_given: bool) -> LabelledSet | None:
    """Data for recovery methods: ``distill_data`` (a file, with labels y when it holds them;
    arrays; or ``{"x": ..., "y": ...}``), else the calibration data, else the data the model ships."""
    source = settings.distill_data
    if isinstance(source, (str, Path)):
        samples, labels = load_labelled(Path(source), model.inputs, "--distill-data")
        return LabelledSet(samples, labels, f"--distill-data {source}")
    if isinstance(source, Mapping):
        if "x" not in source:
            raise UsageError("distill_data as a mapping needs an array x (and optionally labels y)")
        samples = as_samples(source["x"], model, "distillation data")
        labels = np.asarray(source["y"]) if source.get("y") is not None else None
        if labels is not None and len(labels) != count(samples):
            raise UsageError(f"distillation data: {len(labels)} labels for {count(samples)} samples")
        return LabelledSet(samples, labels, "distillation data (x, y)")
    if source is not None:
        return LabelledSet(as_samples(source, model, "distillation data"), None, "distillation data")
    if calibration is not None and calibration_given:
        where = f"--calibration {settings.calibration}" if isinstance(settings.calibration, (str, Path)) else "calibration data"
        return LabelledSet(calibration, None, where)
    if calibration is not None:
        return LabelledSet(calibration, None, "the model's shipped calibration data")
    return None


def resolve_inputs(model: ReferenceModel, settings: ConvertSettings, needs_calibration: bool = False) -> RunInputs:
    """Parity inputs, calibration, evaluation and recovery data, each validated against the
    model's inputs, once. ``needs_calibration``: an int8 target runs, so calibration is drawn
    at random (with a warning) when the user and the model give none."""
    calibration_labels = None
    if isinstance(settings.calibration, (str, Path)):
        calibration, calibration_labels = load_labelled(Path(settings.calibration), model.inputs, "--calibration")
    else:
        calibration = as_samples(settings.calibration, model, "--calibration")
    calibration_given = calibration is not None
    calibration_source = f"--calibration {settings.calibration}" if isinstance(settings.calibration, (str, Path)) else "the calibration data given"
    if calibration is None and model.calibration is not None:
        calibration = check_samples(model.calibration, model.inputs, "the model's shipped calibration data")
        calibration_source = "the example's shipped data"
    recovery = _recovery(settings, model, calibration, calibration_given) if settings.compression else None
    provided = as_samples(settings.parity_inputs, model, "--example-inputs")
    from edgex.core import resources

    # before any sample is drawn or taken: what the parity run holds at once must fit (exit 2)
    resources.check_run_memory(model, settings.samples, provided=provided, calibration=calibration,
                               synthetic_calibration=SYNTHETIC_CALIBRATION if needs_calibration and calibration is None else 0)
    synthetic = False
    if provided is not None and count(provided) > 1:
        samples, source = take(provided, settings.samples, settings.seed), f"--example-inputs ({min(settings.samples, count(provided))} samples)"
    elif calibration is not None:
        # parity rows are held out: an artifact calibrated on its own test inputs proves less;
        # the calibration labels, if any, ride along as one more column and stay with the kept rows
        columns = calibration if calibration_labels is None else (*calibration, calibration_labels)
        samples, kept = hold_out(columns, settings.samples, settings.seed)
        samples = samples[: len(calibration)]
        if kept is not None and calibration_labels is not None:
            kept, calibration_labels = kept[:-1], kept[-1]
        if kept is None:
            source = f"{count(samples)} samples of {calibration_source} (seed {settings.seed}; too few to hold out from calibration)"
        else:
            source = f"{count(samples)} samples of {calibration_source}, held out from calibration (seed {settings.seed}); calibration keeps the other {count(kept)}"
            calibration = kept
    else:
        samples, synthetic = synthetic_samples(model.inputs, settings.samples, settings.seed), True
        source = f"{settings.samples} seeded standard-normal samples (seed {settings.seed})"
    warnings: list[str] = []
    if calibration_labels is not None and isinstance(settings.eval_data, (str, Path)) and Path(settings.calibration).resolve() == Path(settings.eval_data).resolve():
        warnings.append(
            "--calibration and --eval-data are the same file: an int8 converter that tunes on the calibration labels "
            "is then scored on the data it tuned on; pass a disjoint --eval-data for an honest accuracy"
        )
    if needs_calibration:
        if calibration is None:
            calibration = synthetic_samples(model.inputs, SYNTHETIC_CALIBRATION, settings.seed + 1)
            calibration_source = f"{SYNTHETIC_CALIBRATION} random normal samples"
            warnings.append(f"no --calibration data: int8 ranges come from {SYNTHETIC_CALIBRATION} random normal samples and may not fit real inputs")
        else:
            warnings += calibration_warnings(calibration, samples, model.inputs)
    return RunInputs(
        specs=tuple(model.inputs),
        parity=batches(samples, model.inputs),
        parity_source=source,
        parity_synthetic=synthetic,
        calibration=calibration,
        calibration_source=calibration_source,
        evaluation=as_labelled(settings.eval_data, model),
        recovery=recovery,
        warnings=tuple(warnings),
        calibration_labels=calibration_labels,
    )
