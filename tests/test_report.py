"""core/report.py directly: exit codes, the report.json contract, atomic writes, the terminal table."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from edgex.core.parity import ParityReport, Tolerance
from edgex.core.report import Report, TargetReport, model_json, render_table, summary_line, write_json_atomic
from edgex.core.types import ReferenceModel, TensorSpec

ROOT = Path(__file__).parent.parent


def row(name, status, requested=True, **values):
    return TargetReport(name, status, plugin=f"edgex.targets.{name}", requested=requested, **values)


def report_of(*rows, **values):
    return Report("0.0.test", "convert", {"spec": "m"}, targets={r.name: r for r in rows}, **values)


def parity(**values):
    base = dict(samples=8, max_abs=0.00123, mean_abs=0.0004, max_rel=0.01, cosine=0.9999991, sqnr_db=71.25, top1_agreement=1.0,
                tolerance=Tolerance(0.005, 0.0, "fp32 noise floor"), passed=True)
    return ParityReport(**{**base, **values})


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    "statuses, code",
    [
        ([], 0),
        (["passed", "passed"], 0),
        (["passed", "failed"], 1),
        (["passed", "inconclusive"], 1),
        (["failed", "error"], 3),
        (["error", "passed"], 3),
        (["inconclusive", "skipped"], 3),
    ],
)
def test_exit_code_3_beats_1_beats_0(statuses, code):
    assert report_of(*(row(f"t{i}", s) for i, s in enumerate(statuses))).exit_code == code


def test_a_skipped_target_fails_the_run_only_when_it_was_requested():
    assert report_of(row("onnx", "passed"), row("coral", "skipped", requested=False)).exit_code == 0
    assert report_of(row("onnx", "passed"), row("coral", "skipped", requested=True)).exit_code == 3
    assert report_of(row("onnx", "failed"), row("coral", "skipped", requested=False)).exit_code == 1


# --------------------------------------------------------------------------- report.json


def contract_example() -> dict:
    """The report.json example of docs/contract.md: its keys are the required ones."""
    text = (ROOT / "docs" / "contract.md").read_text()
    section = text[text.index("## report.json") :]
    return json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))


def missing_keys(required, actual, where="report.json"):
    missing = []
    for key, value in required.items():
        if key not in actual:
            missing.append(f"{where}.{key}")
        elif isinstance(value, dict) and isinstance(actual[key], dict):
            missing += missing_keys(value, actual[key], f"{where}.{key}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            missing += [m for item in actual[key] for m in missing_keys(value[0], item, f"{where}.{key}[]")]
    return missing


def full_report():
    import torch

    model = ReferenceModel("tests:m", (TensorSpec("input", (1, 3, 8, 8)),), ("logits",), (np.zeros((1, 3, 8, 8), np.float32),), module=torch.nn.Identity(), params=10, macs=20)
    passed = row("onnx", "passed", precision="fp32", artifacts=["onnx/model.onnx"], size_bytes=123, backend="onnxruntime", converter="torch.onnx",
                 convert_seconds=0.123456, parity=parity(), latency_ms={"median": 0.1, "p90": 0.2, "runs": 7}, details={"emulated": False})
    return Report("0.0.test", "convert", model_json(model, {"parity_inputs": "8 samples"}), targets={"onnx": passed, "coral": row("coral", "skipped", requested=False)})


def test_to_json_holds_every_key_the_contract_requires():
    example, data = contract_example(), full_report().to_json()
    template = example.pop("targets")["onnx"]
    assert missing_keys(example, data) == []
    for name, target in data["targets"].items():  # a skipped row holds the keys too, with null blocks
        assert missing_keys(template, target, f"targets.{name}") == []
    assert data["exit_code"] == 0 and data["command"] == "convert"
    assert data["targets"]["onnx"]["emulated"] is False  # details are merged into the row
    assert data["targets"]["onnx"]["convert_seconds"] == 0.1235
    assert data["targets"]["coral"]["parity"] is None and "traceback" not in data["targets"]["coral"]


def test_missing_keys_sees_a_missing_key():
    assert missing_keys({"a": {"b": 1, "c": [{"d": 1}]}}, {"a": {"c": [{"e": 2}]}}) == ["report.json.a.b", "report.json.a.c[].d"]


def test_non_finite_floats_are_written_as_strings(tmp_path):
    report = report_of(row("onnx", "failed", parity=parity(max_rel=math.inf, sqnr_db=-math.inf, cosine=math.nan, passed=False)))
    write_json_atomic(tmp_path / "report.json", report.to_json())
    text = (tmp_path / "report.json").read_text()
    data = json.loads(text)  # strict JSON: no bare Infinity/NaN
    assert "Infinity" not in text and "NaN" not in text
    written = data["targets"]["onnx"]["parity"]
    assert (written["max_rel"], written["sqnr_db"], written["cosine"]) == ("inf", "-inf", "nan")
    assert float(written["max_rel"]) == math.inf and math.isnan(float(written["cosine"]))
    assert written["max_abs"] == 0.00123


def test_write_json_atomic_leaves_no_temp_file_and_is_readable(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_json_atomic(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_json_atomic_never_leaves_half_a_file(tmp_path):
    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    path = tmp_path / "report.json"
    write_json_atomic(path, {"old": True})
    with pytest.raises(RuntimeError, match="cannot serialise"):
        write_json_atomic(path, {"big": list(range(10000)), "bad": Unprintable()})
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


# --------------------------------------------------------------------------- terminal


def test_render_table_rows_then_messages():
    report = report_of(
        row("onnx", "passed", precision="fp32", parity=parity(), size_bytes=2048, backend="onnxruntime",
            accuracy={"artifact": 0.97, "reference": 0.98, "samples": 100, "drop_points": 1.0}),
        row("coral", "skipped", requested=False, messages=["backend missing: edgetpu; pip install edgex[coral]"]),
        messages=["calibration has 10 samples"],
    )
    lines = render_table(report).splitlines()
    assert lines[0].split() == ["target", "status", "precision", "max_abs", "tolerance", "cosine", "sqnr_db", "top1", "size", "backend"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["onnx", "passed", "fp32", "0.00123", "0.005", "0.999999", "71.2", "1.000", "2.0", "KB", "onnxruntime"]
    assert lines[3].split() == ["coral", "skipped", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert lines[4] == "onnx: task accuracy 0.9700 vs reference 0.9800 (100 labelled samples, drop +1.00 points)"
    assert lines[5] == "coral: backend missing: edgetpu; pip install edgex[coral]"
    assert lines[6:] == ["calibration has 10 samples"]


def test_render_table_shows_infinite_numbers_as_inf():
    line = render_table(report_of(row("onnx", "failed", parity=parity(max_abs=math.inf, passed=False)))).splitlines()[2]
    assert line.split()[3] == "inf"


def test_summary_line_counts_in_status_order(tmp_path):
    report = report_of(row("a", "skipped"), row("b", "passed"), row("c", "failed"), row("d", "passed"), row("e", "error"))
    assert summary_line(report, tmp_path) == f"2 passed, 1 failed, 1 error, 1 skipped; report: {tmp_path / 'report.json'}, page: {tmp_path / 'report.html'}"
    assert summary_line(report_of(), None) == "no targets"
