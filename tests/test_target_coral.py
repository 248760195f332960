"""Target ``coral``: full int8 for the Edge TPU, the static op analysis, the compiler log parser."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgex.core import api
from edgex.plugins.testing import check_target_conformance
from edgex.targets.litert import edgetpu
from edgex.targets.litert.graph import read_graph


def _mobilenet_style(activation: type[nn.Module] = nn.ReLU6) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Depthwise-separable blocks with ReLU6 and a residual, the way MobileNetV2 builds them."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(channels, channels * 4, 1, bias=False), nn.BatchNorm2d(channels * 4), nn.ReLU6())
            self.depthwise = nn.Sequential(
                nn.Conv2d(channels * 4, channels * 4, 3, 1, 1, groups=channels * 4, bias=False), nn.BatchNorm2d(channels * 4), activation()
            )
            self.project = nn.Sequential(nn.Conv2d(channels * 4, channels, 1, bias=False), nn.BatchNorm2d(channels))

        def forward(self, x):
            return x + self.project(self.depthwise(self.expand(x)))

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        Block(8), Block(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()
    return model, (torch.randn(1, 3, 32, 32),)


def _calibration(n: int = 48) -> tuple[np.ndarray]:
    return (np.random.default_rng(0).uniform(-1, 1, (n, 3, 32, 32)).astype("float32"),)


# --------------------------------------------------------------------------- real conversions


@pytest.mark.slow
def test_conformance_int8(tmp_path):
    # the trained digits CNN with its own calibration data: on the untrained 16x16 CNN the planted
    # defect moves the outputs by 7.7 int8 steps, inside the int8 tolerance of 8 (see docs/targets/coral.md)
    digits = api.load_model("examples:digits")
    result = check_target_conformance(
        "coral", tmp_path, model=digits.module, example_inputs=[torch.from_numpy(x) for x in digits.example_inputs],
        calibration=digits.calibration,
    )
    row = result.precisions["int8"]
    assert row.details["edgetpu"]["executed_on_edge_tpu"] is False
    assert "no Edge TPU was run" in row.backend


@pytest.mark.slow
def test_mobilenet_style_maps_every_op(tmp_path):
    model, example = _mobilenet_style()
    report = api.convert(model, ["edgetpu"], out=tmp_path, example_inputs=example, calibration=_calibration(), samples=8)
    row = report.targets["coral"]
    assert row.status == "passed", row.messages
    analysis = row.details["edgetpu"]
    assert analysis["op_fraction"] == 1.0 and analysis["mac_fraction"] == 1.0, analysis["first_unmapped"]
    assert analysis["first_unmapped"] is None and not analysis["warnings"]
    assert {"DEPTHWISE_CONV_2D", "CONV_2D"} <= {o["op"] for o in analysis["ops"]}
    assert row.io["inputs"][0]["layout"] == "NHWC" and row.io["inputs"][0]["dtype"] == "int8"
    assert any("edgetpu_compiler is not installed" in m for m in row.messages)
    assert [Path(a).name for a in row.artifacts] == ["model_int8.tflite"]


@pytest.mark.slow
def test_an_unsupported_op_is_named_and_the_rest_falls_to_the_cpu(tmp_path):
    model, example = _mobilenet_style(activation=nn.Hardswish)  # HARD_SWISH is not in the Edge TPU table
    # rewrite="none": left to --rewrite auto, hardswish becomes MUL/ADD/RELU6, which all map
    report = api.convert(model, ["coral"], out=tmp_path, example_inputs=example, calibration=_calibration(), samples=8, rewrite="none")
    row = report.targets["coral"]
    assert row.status == "passed", row.messages  # parity is the int8 model on LiteRT: it still holds
    analysis = row.details["edgetpu"]
    first = analysis["first_unmapped"]
    assert first["op"] == "HARD_SWISH" and "not in the Edge TPU supported-operation table" in first["reason"]
    ops = analysis["ops"]
    assert all(o["mapped"] for o in ops[: first["index"]])
    assert not any(o["mapped"] for o in ops[first["index"]:])
    assert any(o["supported"] and "after the first unmapped op" in o["reason"] for o in ops[first["index"] + 1:])
    assert 0 < analysis["op_fraction"] < 1 and 0 < analysis["mac_fraction"] < 1
    warning = next(m for m in row.messages if m.startswith("Edge TPU:"))
    assert f"op #{first['index']} HARD_SWISH cannot be mapped" in warning and "CPU" in warning


# --------------------------------------------------------------------------- the op table


def test_every_rule_in_the_op_table_is_implemented():
    table = edgetpu.op_table()
    assert "coral.ai" in table["source"] and len(table["ops"]) >= 40
    for op, entry in table["ops"].items():
        assert entry["name"] and isinstance(entry["limitations"], str)
        for rule in entry["rules"]:
            assert rule["rule"] in edgetpu.RULES, f"{op}: rule {rule['rule']!r} has no implementation"


def test_static_analysis_flags_float_tensors(tmp_path):
    """A float model maps nothing: the first op already works on float32."""
    model, example = _mobilenet_style()
    report = api.convert(model, ["tflite"], out=tmp_path, example_inputs=example, samples=2)
    analysis = edgetpu.analyze(read_graph(tmp_path / report.targets["tflite"].artifacts[0]))
    assert analysis.ops_mapped == 0 and analysis.first_unmapped["index"] == 0
    assert "float32" in analysis.first_unmapped["reason"] and "not 8-bit quantized" in analysis.first_unmapped["reason"]


# --------------------------------------------------------------------------- the compiler's log


COMPILER_LOG = textwrap.dedent(
    """\
    Edge TPU Compiler version 16.0.384591198
    Started a compilation timeout timer of 180 seconds.

    Model compiled successfully in 412 ms.

    Input model: model_int8.tflite
    Input size: 2.80MiB
    Output model: model_int8_edgetpu.tflite
    Output size: 2.87MiB
    On-chip memory used for caching model parameters: 2.71MiB
    On-chip memory remaining for caching model parameters: 4.97MiB
    Off-chip memory used for streaming uncached model parameters: 0.00B
    Number of Edge TPU subgraphs: 1
    Total number of operations: 35
    Operation log: model_int8_edgetpu.log

    Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
    Number of operations that will run on Edge TPU: 1
    Number of operations that will run on CPU: 34

    Operator                       Count      Status

    CONV_2D                        1          Mapped to Edge TPU
    PADV2                          1          Operation not supported
    MAX_POOL_2D                    1          More than one subgraph is not supported
    CONV_2D                        19         More than one subgraph is not supported
    ADD                            8          More than one subgraph is not supported
    PAD                            3          More than one subgraph is not supported
    MEAN                           1          More than one subgraph is not supported
    FULLY_CONNECTED                1          More than one subgraph is not supported
    Compilation child process completed within timeout period.
    Compilation succeeded!
    """
)


def test_compiler_log_parser_reads_the_operation_table():
    log = edgetpu.parse_compiler_log(COMPILER_LOG)
    assert log.version == "16.0.384591198"
    assert (log.ops_total, log.ops_on_edge_tpu, log.ops_on_cpu, log.edge_tpu_subgraphs) == (35, 1, 34, 1)
    assert log.on_chip_memory == "2.71MiB" and log.off_chip_memory == "0.00B"
    assert log.rows[0] == ("CONV_2D", 1, "Mapped to Edge TPU")
    assert log.rows[1] == ("PADV2", 1, "Operation not supported")
    assert len(log.rows) == 8 and sum(count for _, count, _ in log.rows) == 35
    assert log.ops_mapped == 1 and log.ops_counted == 35


def test_compiler_log_file_without_summary_lines():
    """The *_edgetpu.log file carries only the header and the table."""
    text = "Edge TPU Compiler version 15.0.340273435\nInput: m.tflite\nOutput: m_edgetpu.tflite\n\n" + COMPILER_LOG[COMPILER_LOG.index("Operator"):]
    log = edgetpu.parse_compiler_log(text)
    assert log.version == "15.0.340273435" and log.ops_total is None
    assert log.ops_mapped == 1 and log.ops_counted == 35


def test_compiler_log_parser_rejects_other_text():
    with pytest.raises(ValueError, match="no Edge TPU compiler operation table"):
        edgetpu.parse_compiler_log("Internal compiler error. Aborting!\n")


@pytest.mark.slow
def test_compiler_fields_and_the_compiler_step(tmp_path, monkeypatch):
    """Where edgetpu_compiler is on PATH, its verdict joins the report. The real compiler only
    ships in Google's apt repository, so a stand-in prints a real log's format; the parsing,
    the subprocess call and the report fields are edgex's own code."""
    model, example = _mobilenet_style()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys, pathlib\n"
        "args = sys.argv[1:]\n"
        "out = pathlib.Path(args[args.index('--out_dir') + 1]); model = pathlib.Path(args[-1])\n"
        "shutil.copyfile(model, out / (model.stem + '_edgetpu.tflite'))\n"
        f"print({COMPILER_LOG!r})\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    report = api.convert(model, ["coral"], out=tmp_path / "out", example_inputs=example, calibration=_calibration(), samples=4)
    row = report.targets["coral"]
    assert row.status == "passed", row.messages
    compiler = row.details["edgetpu"]["compiler"]
    assert compiler["version"] == "16.0.384591198" and compiler["ops_mapped"] == 1 and compiler["ops_total"] == 35
    assert compiler["unmapped"][0] == {"op": "PADV2", "count": 1, "reason": "Operation not supported"}
    assert sorted(Path(a).name for a in row.artifacts) == ["model_int8.tflite", "model_int8_edgetpu.tflite"]
    assert any("nothing was run on an Edge TPU" in m for m in row.messages)
