"""Recovery after pruning: distillation from the unpruned model, supervised fine-tuning with
labels, the iterative schedule, determinism under a seed, and progress reporting."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch

from edgex.core import api
from edgex.core.compression import CompressionStep
from edgex.core.compression.layers import weight_parameters
from edgex.core.errors import UsageError
from edgex.core.progress import ProgressDisplay
from edgex.core.types import StageEvent
from edgex.plugins import hookimpl
from edgex.plugins.testing import tiny_cnn


pytestmark = pytest.mark.usefixtures("one_thread")


def structured_then_distill(epochs: int = 3, **distill):
    return [
        CompressionStep("l1-structured", {"amount": 0.5}),
        CompressionStep("distill", {"epochs": epochs, **distill}),
    ]


def test_distillation_wins_back_what_pruning_lost_and_is_deterministic():
    model, summary = api.compress("examples:digits", structured_then_distill(), seed=3)
    drift = summary["drift"]
    assert drift["inputs"] == "450 held-out labelled samples"
    assert drift["after_recovery"]["cosine"] > drift["before_recovery"]["cosine"]
    assert drift["after_recovery"]["accuracy"] > drift["before_recovery"]["accuracy"] + 0.2
    recovery = summary["recovery"]
    assert recovery["mode"].startswith("distillation") and recovery["samples"] == 1347  # the training split
    assert recovery["loss_last_epoch"] < recovery["loss_first_epoch"]
    assert recovery["data"] == "the model's shipped calibration data"

    again, _ = api.compress("examples:digits", structured_then_distill(), seed=3)
    other, _ = api.compress("examples:digits", structured_then_distill(), seed=4)
    weights = model.module.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in again.module.state_dict().items())
    assert not all(torch.equal(weights[k], v) for k, v in other.module.state_dict().items())


def test_the_same_data_trains_the_same_whatever_its_memory_layout(tmp_path):
    """scikit-learn's split leaves odd strides on the channel axis; a file has none."""
    from edgex.examples.digits import data

    images = data()[0][:256]
    np.save(tmp_path / "images.npy", images)
    assert images.strides != np.load(tmp_path / "images.npy").strides
    from_array, _ = api.compress("examples:digits", structured_then_distill(epochs=1), distill_data=images)
    from_file, _ = api.compress("examples:digits", structured_then_distill(epochs=1), distill_data=tmp_path / "images.npy")
    a, b = from_array.module.state_dict(), from_file.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_supervised_fine_tuning_when_labels_are_given(tmp_path):
    from edgex.examples.digits import data

    x_train, y_train, _, _ = data()
    labelled = tmp_path / "train.npz"
    np.savez(labelled, x=x_train[:320], y=y_train[:320])
    _, summary = api.compress("examples:digits", structured_then_distill(epochs=2), distill_data=labelled)
    assert summary["recovery"]["mode"].startswith("supervised")
    assert summary["recovery"]["samples"] == 320
    assert summary["drift"]["after_recovery"]["accuracy"] > 0.8

    np.savez(labelled, x=x_train[:32], y=y_train[:32] + 10)
    with pytest.raises(UsageError, match=r"labels y range over \[10, 19\] but the model scores 10 classes"):
        api.compress("examples:digits", structured_then_distill(epochs=1), distill_data=labelled)
    np.savez(labelled, x=x_train[:32], y=y_train[:31])
    with pytest.raises(UsageError, match="31 labels for 32 samples"):
        api.compress("examples:digits", structured_then_distill(epochs=1), distill_data=labelled)


def test_recovery_keeps_unstructured_zeros():
    prune = CompressionStep("l1-unstructured", {"amount": 0.5})
    pruned, _ = api.compress("examples:digits", [prune])
    recovered, summary = api.compress("examples:digits", [prune, CompressionStep("distill", {"epochs": 1})])
    before, after = dict(weight_parameters(pruned.module)), dict(weight_parameters(recovered.module))
    for name in ("features.0.weight", "features.3.weight", "features.7.weight"):
        assert torch.equal(before[name] == 0, after[name] == 0), name  # the same weights are zero
        assert not torch.equal(before[name], after[name]), name  # and the others were trained
    assert summary["after"]["nonzero_params"] == pytest.approx(0.52 * summary["before"]["nonzero_params"], rel=0.02)
    assert summary["recovery"]["sparse_tensors_kept"] == 3


def test_iterative_schedule_recovers_between_steps():
    steps = [
        CompressionStep("l1-structured", {"amount": 0.5, "steps": 2, "round_to": 1}),
        CompressionStep("distill", {"epochs": 1}),
    ]
    model, summary = api.compress("examples:digits", steps)
    order = [(s["method"], s.get("round")) for s in summary["steps"]]
    assert order == [("l1-structured", "1/2"), ("distill", "1/2"), ("l1-structured", "2/2"), ("distill", "2/2")]
    assert summary["recovery"]["rounds"] == 2
    # two calls of 1 - sqrt(0.5) each remove half the channels in all
    first, last = summary["steps"][0], summary["steps"][2]
    assert first["channels_before"] == 112 and first["amount"] == pytest.approx(1 - 0.5**0.5)
    assert last["channels_after"] == pytest.approx(56, abs=3)


def test_distillation_needs_data():
    model, example = tiny_cnn()
    with pytest.raises(UsageError, match="needs data"):
        api.compress(model, structured_then_distill(epochs=1), example_inputs=example)


def test_distillation_of_outputs_that_are_not_class_scores():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 24), torch.nn.Tanh(), torch.nn.Linear(24, 1)).eval()
    samples = np.random.default_rng(0).standard_normal((128, 6)).astype("float32")
    steps = [CompressionStep("l1-structured", {"amount": 0.5}), CompressionStep("distill", {"epochs": 30, "lr": 3e-3})]
    _, summary = api.compress(model, steps, example_inputs=(torch.randn(1, 6),), distill_data=samples)
    drift = summary["drift"]
    assert drift["after_recovery"]["mean_abs"] < 0.5 * drift["before_recovery"]["mean_abs"]
    assert drift["after_recovery"]["top1_agreement"] is None


class Recorder:
    def __init__(self) -> None:
        self.events: list[StageEvent] = []

    @hookimpl
    def edgex_stage_progress(self, event: StageEvent) -> None:
        self.events.append(event)


def test_progress_with_the_loss_reaches_observers():
    recorder = Recorder()
    manager = api.plugin_manager(observers=[recorder])
    api.compress("examples:digits", structured_then_distill(epochs=2), plugins=manager)
    assert recorder.events and all(e.stage == "compress" for e in recorder.events)
    assert recorder.events[-1].progress == pytest.approx(1.0)
    assert recorder.events[0].detail.startswith("distill epoch 1/2 loss ")
    fractions = [e.progress for e in recorder.events]
    assert fractions == sorted(fractions)


def test_progress_display_draws_a_bar_on_a_terminal_and_nothing_elsewhere(monkeypatch):
    monkeypatch.setattr("edgex.core.progress.SHOW_AFTER_S", 0.0)
    terminal = io.StringIO()
    display = ProgressDisplay(stream=terminal, enabled=True)
    display.edgex_stage_started(StageEvent("compress"))
    display.edgex_stage_progress(StageEvent("compress", detail="distill epoch 2/4 loss 0.125", progress=0.5))
    deadline = time.monotonic() + 5
    while "loss" not in terminal.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    display.edgex_stage_finished(StageEvent("compress", outcome="ok", seconds=2.0))
    display.close()
    assert "compressing [##########..........] distill epoch 2/4 loss 0.125" in terminal.getvalue()

    piped = io.StringIO()  # not a terminal: quiet
    quiet = ProgressDisplay(stream=piped)
    quiet.edgex_stage_started(StageEvent("compress"))
    quiet.edgex_stage_progress(StageEvent("compress", detail="distill epoch 1/1 loss 1", progress=1.0))
    quiet.edgex_stage_finished(StageEvent("compress", outcome="ok", seconds=2.0))
    quiet.close()
    assert piped.getvalue() == ""
