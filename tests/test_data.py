"""core/data.py directly: where a run's data comes from, sampling, batching, checks and warnings."""

from dataclasses import replace

import numpy as np
import pytest

from edgex.core.compression import CompressionStep
from edgex.core.data import SYNTHETIC_CALIBRATION, batches, calibration_warnings, check_samples, resolve_inputs, take
from edgex.core.errors import UsageError
from edgex.core.settings import make_settings
from edgex.core.types import ReferenceModel, TensorSpec

SPEC = TensorSpec("input", (1, 2, 3))


def model(**values):
    return ReferenceModel("tests:m", (SPEC,), ("out",), (np.zeros(SPEC.shape, np.float32),), **values)


def rows(n, start=0.0):
    """``n`` samples for SPEC whose every value is its row number (plus ``start``): rows stay recognisable."""
    return (np.arange(start, start + n, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32),)


def row_ids(samples):
    return samples[0][:, 0, 0].tolist()


def parity_rows(inputs):
    return [v for batch in inputs.parity for v in batch[0][:, 0, 0].tolist()]


# --------------------------------------------------------------------------- where parity inputs come from


def test_example_inputs_win_over_calibration():
    inputs = resolve_inputs(model(calibration=rows(20)), make_settings(samples=4, parity_inputs=rows(10, start=100)))
    assert inputs.parity_source == "--example-inputs (4 samples)" and not inputs.parity_synthetic
    assert all(v >= 100 for v in parity_rows(inputs)) and len(inputs.parity) == 4
    assert row_ids(inputs.calibration) == list(range(20))  # nothing held out from it


def test_calibration_rows_are_held_out_for_parity():
    inputs = resolve_inputs(model(calibration=rows(20)), make_settings(samples=4, seed=3))
    assert inputs.parity_source == "4 samples of the example's shipped data, held out from calibration (seed 3); calibration keeps the other 16"
    held = parity_rows(inputs)
    assert len(held) == 4 and not set(held) & set(row_ids(inputs.calibration))
    assert sorted(held + row_ids(inputs.calibration)) == list(range(20))


def test_a_calibration_file_is_named_in_the_source(tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, rows(6)[0])
    inputs = resolve_inputs(model(), make_settings(samples=2, calibration=path))
    assert inputs.parity_source.startswith(f"2 samples of --calibration {path}, held out")
    assert inputs.calibration_source == f"--calibration {path}"


def test_calibration_labels_stay_with_their_rows_and_never_come_from_eval_data(tmp_path):
    """Labels in a calibration .npz reach the converter with the kept rows (each row's label is
    its row number here); the parity rows held out take theirs away, and eval labels are never used."""
    path = tmp_path / "calib.npz"
    np.savez(path, x=rows(10)[0], y=np.arange(10))
    inputs = resolve_inputs(model(), make_settings(samples=3, seed=1, calibration=path))
    assert inputs.calibration_labels.tolist() == row_ids(inputs.calibration) and len(row_ids(inputs.calibration)) == 7
    assert [b.tolist() for b in inputs.calibration_label_batches] == [[r] for r in row_ids(inputs.calibration)]
    unlabelled = tmp_path / "calib.npy"
    np.save(unlabelled, rows(10)[0])
    assert resolve_inputs(model(eval_data=(rows(4)[0], np.arange(4))), make_settings(calibration=unlabelled)).calibration_label_batches is None
    same = resolve_inputs(model(), make_settings(samples=3, calibration=path, eval_data=path))
    assert any("--calibration and --eval-data are the same file" in w for w in same.warnings)


def test_one_calibration_row_cannot_be_held_out():
    inputs = resolve_inputs(model(calibration=rows(1)), make_settings(samples=4))
    assert inputs.parity_source == "1 samples of the example's shipped data (seed 0; too few to hold out from calibration)"
    assert row_ids(inputs.calibration) == [0.0]


def test_without_data_parity_inputs_are_seeded_random():
    first = resolve_inputs(model(), make_settings(samples=5, seed=7))
    again = resolve_inputs(model(), make_settings(samples=5, seed=7))
    other = resolve_inputs(model(), make_settings(samples=5, seed=8))
    assert first.parity_source == "5 seeded standard-normal samples (seed 7)" and first.parity_synthetic
    assert first.calibration is None and len(first.parity) == 5
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first.parity, again.parity))
    assert not np.array_equal(first.parity[0][0], other.parity[0][0])


def test_an_int8_run_without_calibration_draws_random_calibration_with_a_warning():
    inputs = resolve_inputs(model(), make_settings(samples=4), needs_calibration=True)
    assert inputs.calibration[0].shape == (SYNTHETIC_CALIBRATION, 2, 3)
    assert inputs.calibration_source == f"{SYNTHETIC_CALIBRATION} random normal samples"
    assert inputs.warnings == (f"no --calibration data: int8 ranges come from {SYNTHETIC_CALIBRATION} random normal samples and may not fit real inputs",)
    assert not np.array_equal(inputs.calibration[0][:4], np.concatenate([b[0] for b in inputs.parity]))  # a different seed


# --------------------------------------------------------------------------- sampling and batching


def test_take_draws_without_replacement_deterministically():
    samples = rows(50)
    drawn = row_ids(take(samples, 10, seed=1))
    assert len(set(drawn)) == 10 and drawn == sorted(drawn)
    assert row_ids(take(samples, 10, seed=1)) == drawn and row_ids(take(samples, 10, seed=2)) != drawn
    assert row_ids(take(samples, 60, seed=1)) == list(range(50))  # fewer than asked: all, in order


def test_batches_take_the_models_batch_size_and_drop_a_ragged_tail():
    spec = TensorSpec("input", (2, 3))
    cut = batches((np.arange(15, dtype=np.float32).reshape(5, 3),), (spec,))
    assert [b[0].shape for b in cut] == [(2, 3), (2, 3)]
    assert cut[1][0][0].tolist() == [6.0, 7.0, 8.0]
    whole = np.zeros((2, 3), np.float32)
    assert len(batches((whole,), (spec,))) == 1  # exactly one batch as the model takes it
    assert [b[0].shape for b in batches(rows(3), (SPEC,))] == [(1, 2, 3)] * 3


def test_check_samples_errors_are_one_line():
    two = (SPEC, TensorSpec("mask", (1, 4)))
    with pytest.raises(UsageError) as wrong_count:
        check_samples([np.zeros((3, 2, 3))], two, "--calibration c.npz")
    with pytest.raises(UsageError) as wrong_shape:
        check_samples([np.zeros((3, 3, 2))], (SPEC,), "--calibration c.npy")
    with pytest.raises(UsageError) as uneven:
        check_samples([np.zeros((3, 2, 3)), np.zeros((4, 4))], two, "--example-inputs x.npz")
    assert str(wrong_count.value) == "--calibration c.npz holds 1 arrays but the model takes 2 inputs (input, mask)"
    assert "samples of shape (3, 2) (array (3, 3, 2)) do not fit input 'input', which takes (2, 3) per sample" in str(wrong_shape.value)
    assert str(uneven.value) == "--example-inputs x.npz: the inputs hold different numbers of samples ([3, 4])"
    assert all("\n" not in str(e.value) for e in (wrong_count, wrong_shape, uneven))


def test_check_samples_casts_floats_to_the_inputs_dtype():
    checked = check_samples([np.zeros((3, 2, 3), np.float64)], (SPEC,), "x")
    assert checked[0].dtype == np.float32


# --------------------------------------------------------------------------- calibration warnings


def test_calibration_warnings():
    assert calibration_warnings(rows(100), None, (SPEC,)) == []
    small = calibration_warnings(rows(10), None, (SPEC,))
    assert small == ["calibration has 10 samples (< 100): int8 ranges may miss real inputs; pass more with --calibration"]
    constant = calibration_warnings((np.full((120, 2, 3), 0.5, np.float32),), None, (SPEC,))
    assert constant == ["calibration input 'input' is constant (0.5): int8 scales will be degenerate"]
    narrow = calibration_warnings(rows(120), (rows(10)[0] * 100,), (SPEC,))
    assert len(narrow) == 1 and "the calibration looks unrepresentative" in narrow[0] and "[0, 119]" in narrow[0]
    assert calibration_warnings(rows(120), rows(50, start=10), (SPEC,)) == []


def test_resolve_inputs_warns_about_a_small_calibration_only_for_int8():
    given = make_settings(samples=2, calibration=rows(20))
    assert resolve_inputs(model(), given).warnings == ()
    # the count is what the artifact calibrates on: 20 less the 2 rows held out for parity
    assert any("calibration has 18 samples" in w for w in resolve_inputs(model(), given, needs_calibration=True).warnings)


# --------------------------------------------------------------------------- evaluation and recovery data


def test_eval_data_without_labels_is_refused(tmp_path):
    path = tmp_path / "eval.npz"
    np.savez(path, x=rows(4)[0])
    with pytest.raises(UsageError, match=r"--eval-data .*eval.npz holds no labels: save it as .npz with arrays x and y"):
        resolve_inputs(model(), make_settings(eval_data=path))


def test_eval_data_from_a_file_a_pair_or_the_model():
    path_model = model(eval_data=(rows(6)[0], np.arange(6)))
    assert resolve_inputs(path_model, make_settings()).evaluation.source == "the model's shipped eval data"
    given = resolve_inputs(path_model, make_settings(eval_data=(rows(3)[0], np.array([0, 1, 2]))))
    assert given.evaluation.source == "eval data (x, y)" and given.eval_labels.tolist() == [0, 1, 2]
    assert len(given.eval_batches) == 3
    assert resolve_inputs(model(), make_settings()).evaluation is None


def test_eval_data_file_with_labels(tmp_path):
    path = tmp_path / "eval.npz"
    np.savez(path, x=rows(4)[0], y=np.array([3, 1, 4, 1]))
    evaluation = resolve_inputs(model(), make_settings(eval_data=path)).evaluation
    assert evaluation.source == f"--eval-data {path}" and evaluation.labels.tolist() == [3, 1, 4, 1]
    np.savez(path, x=rows(4)[0], y=np.array([3, 1]))
    with pytest.raises(UsageError, match="2 labels for 4 samples"):
        resolve_inputs(model(), make_settings(eval_data=path))


COMPRESS = (CompressionStep("l1-structured"),)


def recovery(m=None, **values):
    return resolve_inputs(m or model(), make_settings(samples=2, compression=COMPRESS, **values)).recovery


def test_recovery_data_only_when_compressing():
    assert resolve_inputs(model(), make_settings(distill_data=rows(4))).recovery is None


def test_recovery_data_from_a_mapping_arrays_or_a_file(tmp_path):
    mapped = recovery(distill_data={"x": rows(4)[0], "y": np.array([0, 1, 0, 1])})
    assert mapped.source == "distillation data (x, y)" and mapped.labels.tolist() == [0, 1, 0, 1] and row_ids(mapped.samples) == [0, 1, 2, 3]
    unlabelled = recovery(distill_data={"x": rows(4)[0]})
    assert unlabelled.labels is None
    arrays = recovery(distill_data=rows(5)[0])
    assert arrays.source == "distillation data" and arrays.labels is None and len(arrays.samples[0]) == 5
    path = tmp_path / "distill.npz"
    np.savez(path, x=rows(3)[0], y=np.array([2, 2, 2]))
    from_file = recovery(distill_data=path)
    assert from_file.source == f"--distill-data {path}" and from_file.labels.tolist() == [2, 2, 2]


def test_recovery_data_errors():
    with pytest.raises(UsageError, match="distill_data as a mapping needs an array x"):
        recovery(distill_data={"y": np.array([1])})
    with pytest.raises(UsageError, match="distillation data: 2 labels for 4 samples"):
        recovery(distill_data={"x": rows(4)[0], "y": np.array([0, 1])})


def test_recovery_falls_back_to_the_calibration_data(tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, rows(6)[0])
    assert recovery(calibration=path).source == f"--calibration {path}"
    assert recovery(calibration=rows(6)).source == "calibration data"
    shipped = recovery(model(calibration=rows(6)))
    assert shipped.source == "the model's shipped calibration data" and len(shipped.samples[0]) == 6
    assert recovery() is None
