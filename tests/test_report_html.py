"""report.html (core/report_html.py and its templates), checked in headless Chromium on real runs,
and junit.xml against the JUnit schema's rules (tests/data/junit.xsd).

No XSD validator is installed (neither lxml nor xmlschema): ``schema_problems`` below reads the
subset of XSD that tests/data/junit.xsd uses (elements by ref, a sequence of children with
minOccurs/maxOccurs and order, attributes with use="required" and their xs: types, mixed text)
and checks a document against it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from edgex.core.cli import main
from edgex.core.parity import ERROR_HISTOGRAM_EDGES, Tolerance, compare
from edgex.core.report import matrix_junit
from edgex.core.report_html import Plots, matrix_page, report_page

DATA = Path(__file__).parent / "data"
XS = "{http://www.w3.org/2001/XMLSchema}"
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


# --------------------------------------------------------------------------- the schema check


def load_schema(path: Path) -> dict[str, dict]:
    """Each element's rule: its children in order with (min, max), its attributes (type, required), text allowed."""
    rules = {}
    for element in ET.parse(path).getroot().findall(f"{XS}element"):
        complex_type = element.find(f"{XS}complexType")
        if complex_type is None:  # a simple type: text only
            rules[element.get("name")] = {"children": [], "attributes": {}, "text": True}
            continue
        children = []
        for child in complex_type.findall(f"{XS}sequence/{XS}element"):
            top = child.get("maxOccurs", "1")
            children.append((child.get("ref"), int(child.get("minOccurs", "1")), None if top == "unbounded" else int(top)))
        attributes = {a.get("name"): (a.get("type"), a.get("use") == "required") for a in complex_type.findall(f"{XS}attribute")}
        rules[element.get("name")] = {"children": children, "attributes": attributes, "text": complex_type.get("mixed") == "true"}
    return rules


def _typed(value: str, xs_type: str) -> bool:
    if xs_type == "xs:decimal":
        return re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", value) is not None
    if xs_type == "xs:nonNegativeInteger":
        return re.fullmatch(r"\+?\d+", value) is not None
    return True  # xs:string


def schema_problems(element: ET.Element, rules: dict[str, dict], path: str = "") -> list[str]:
    where = f"{path}/{element.tag}"
    rule = rules.get(element.tag)
    if rule is None:
        return [f"{where}: element not in the schema"]
    problems = []
    for name, value in element.attrib.items():
        if name not in rule["attributes"]:
            problems.append(f"{where}: attribute {name!r} not allowed")
        elif not _typed(value, rule["attributes"][name][0]):
            problems.append(f"{where}: {name}={value!r} is not {rule['attributes'][name][0]}")
    problems += [f"{where}: required attribute {n!r} missing" for n, (_, required) in rule["attributes"].items() if required and n not in element.attrib]
    if not rule["text"] and (element.text or "").strip():
        problems.append(f"{where}: text not allowed")
    order = [name for name, _, _ in rule["children"]]
    positions = []
    for child in element:
        if child.tag not in order:
            problems.append(f"{where}: child {child.tag!r} not allowed")
        else:
            positions.append(order.index(child.tag))
    if positions != sorted(positions):
        problems.append(f"{where}: children out of the schema's order")
    for name, low, high in rule["children"]:
        n = sum(1 for child in element if child.tag == name)
        if n < low or (high is not None and n > high):
            problems.append(f"{where}: {n} <{name}> (the schema allows {low}..{high if high is not None else 'unbounded'})")
    for child in element:
        problems += schema_problems(child, rules, where)
    return problems


def test_the_schema_check_finds_what_the_schema_forbids():
    rules = load_schema(DATA / "junit.xsd")
    bad = ET.fromstring(
        '<testsuite tests="two" colour="red"><testcase classname="c"><failure/><skipped/></testcase><testcase name="x">text</testcase></testsuite>'
    )
    problems = schema_problems(bad, rules)
    for expected in ("required attribute 'name' missing", "'colour' not allowed", "tests='two' is not xs:nonNegativeInteger", "children out of the schema's order", "text not allowed"):
        assert any(expected in p for p in problems), (expected, problems)
    good = ET.fromstring('<testsuites><testsuite name="s" tests="1" time="0.5"><testcase name="t"><failure message="m">why</failure></testcase></testsuite></testsuites>')
    assert schema_problems(good, rules) == []


# --------------------------------------------------------------------------- junit.xml


def cell(model, target, status, parity=None, accuracy=None, messages=()):
    row = {"status": status, "precision": "int8", "convert_seconds": 1.25, "parity": parity, "accuracy": accuracy, "messages": list(messages), "size_bytes": 2048}
    return {"cell": {"model": model, "compression": "none", "target": target, "precision": "int8"}, "targets": {target: row}}


def parity_json(max_abs, atol, passed):
    return {
        "max_abs": max_abs, "sqnr_db": 31.5, "cosine": 0.9991, "top1_agreement": 0.97, "passed": passed,
        "tolerance": {"atol": atol, "rtol": 0.0, "source": "int8 against edgex's simulated reference", "min_sqnr_db": 25.0},
    }


def test_junit_follows_the_schema_and_failures_carry_metrics_and_tolerance():
    cells = [
        cell("m", "onnx", "passed", parity_json(0.01, 0.05, True)),
        cell("m", "tflite", "failed", parity_json(0.5, 0.05, False), {"artifact": 0.9, "reference": 0.95}, ["output 'y': max |error| 0.5 exceeds <the> tolerance & more \"quoted\""]),
        cell("m", "coreml", "inconclusive", parity_json(0.0, 0.05, True), messages=["inconclusive: a constant reference"]),
        cell("m", "mcu", "error", messages=["converter crashed"]),
        cell("m", "coral", "skipped", messages=["no edgetpu_compiler"]),
    ]
    text = matrix_junit(cells)
    suite = ET.fromstring(text)
    assert schema_problems(suite, load_schema(DATA / "junit.xsd")) == []
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("5", "2", "1", "1")
    failure = suite.find("testcase[@name='tflite[int8]']/failure")
    assert failure.get("message").startswith("output 'y': max |error| 0.5 exceeds <the> tolerance & more \"quoted\"")  # escaped by the XML writer, read back whole
    for part in ("max_abs 0.5", "tolerance 0.05", "min_sqnr_db 25.0", "sqnr_db 31.5", "top1_agreement 0.9700", "accuracy 0.9000"):
        assert part in failure.get("message"), part
    assert "tolerance source: int8 against edgex's simulated reference" in failure.text
    assert suite.find("testcase[@name='coreml[int8]']/failure").get("type") == "inconclusive"
    assert suite.find("testcase[@name='mcu[int8]']/error").get("message") == "converter crashed"
    assert suite.find("testcase[@name='coral[int8]']/skipped").get("message") == "no edgetpu_compiler"
    assert suite.find("testcase[@name='onnx[int8]']").findall("*") == []


def test_an_emulated_verdict_says_so_on_every_summary(tmp_path):
    """jetson without TensorRT: its pass is onnxruntime's, and the terminal table, the summary line,
    report.html, the matrix page and junit.xml all say ``passed (emulated)`` (issue 28)."""
    import edgex.core as edgex
    from edgex.core.report import render_table, summary_line

    out = tmp_path / "out"
    typed = edgex.convert("examples:digits", ["jetson", "onnx"], samples=2, out=out)
    assert typed.exit_code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["jetson"]["emulated"] is True and "emulated" not in report["targets"]["onnx"]
    table = render_table(typed).splitlines()
    assert next(line for line in table if line.startswith("jetson")).split()[1:3] == ["passed", "(emulated)"]
    assert next(line for line in table if line.startswith("onnx")).split()[1] == "passed" and "(emulated)" not in next(line for line in table if line.startswith("onnx"))
    assert "jetson on an emulated backend" in summary_line(typed, out)
    page = (out / "report.html").read_text()
    assert page.count("passed (emulated)") == 2  # the summary's verdict cell and the target's heading
    cells = [{"cell": {"model": "digits", "compression": "none", "target": t, "precision": row["precision"]}, "targets": {t: row}} for t, row in report["targets"].items()]
    suite = ET.fromstring(matrix_junit(cells))
    assert schema_problems(suite, load_schema(DATA / "junit.xsd")) == []
    jetson = suite.find("testcase[@name='jetson[fp16]']")
    assert jetson.get("status") == "passed (emulated)" and "TensorRT not run" in jetson.find("system-out").text
    assert suite.find("testcase[@name='onnx[fp32]']").get("status") == "passed"
    assert "passed (emulated)" in matrix_page(cells)


# --------------------------------------------------------------------------- the histogram report.json carries


@pytest.mark.parametrize("panels", [1, 2, 3, 4])
def test_comparison_lists_the_first_row_on_top_whatever_the_number_of_panels(panels):
    # the panels share the y axis: flipping it once per panel put the first row at the bottom
    # whenever the number of panels was even
    svg = Plots().comparison(["first", "second"], ["passed", "failed"], [(f"measure {i}", [1.0, 2.0]) for i in range(panels)])
    heights = {name: float(y) for y, name in re.findall(r'<text[^>]* y="([-\d.]+)"[^>]*>(first|second)</text>', svg)}
    assert heights["first"] < heights["second"]  # SVG's y grows downwards


def test_error_histogram_counts_elements_in_units_of_the_tolerance():
    reference = [[np.zeros((1, 8))]]
    errors = np.array([[0.0, 0.0005, 0.03, 0.3, 0.9, 1.2, 4.0, np.inf]])  # in units of atol=1: one per region
    judged = compare(reference, [[errors]], ["y"], [Tolerance(1.0, 0.0, "test")])
    histogram = judged.error_histogram
    assert histogram["edges"] == list(ERROR_HISTOGRAM_EDGES) and histogram["unit"] == "tolerance"
    counts = dict(zip(zip(histogram["edges"], histogram["edges"][1:]), histogram["counts"]))
    assert counts[(0.0, 0.001)] == 2 and counts[(0.01, 0.1)] == 1 and counts[(0.25, 0.5)] == 1 and counts[(0.75, 1.0)] == 1
    assert counts[(1.0, 1.5)] == 1 and counts[(2.0, 5.0)] == 1 and histogram["above"] == 1  # inf is past the last edge
    assert sum(histogram["counts"]) + histogram["above"] == 8
    assert json.loads(json.dumps(judged.to_json()))["error_histogram"] == histogram


# --------------------------------------------------------------------------- the page without a browser


def synthetic_report():
    histogram = {"edges": list(ERROR_HISTOGRAM_EDGES), "counts": [5, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0], "above": 0, "unit": "tolerance"}
    passed = {**parity_json(0.01, 0.05, True), "samples": 4, "outputs": [{"name": "y", "max_abs": 0.01, "within_tolerance": 1.0, "sqnr_db": 31.5, "tolerance": parity_json(0, 0.05, True)["tolerance"]}], "error_histogram": histogram}
    return {
        "command": "convert", "model": {"spec": "nets.py:make"}, "exit_code": 3, "messages": [],
        "targets": {
            "onnx": {"status": "passed", "precision": "int8", "parity": passed, "size_bytes": 4096, "latency_ms": {"median": 0.2, "p90": 0.3, "runs": 3}, "messages": [], "accuracy": None},
            "tflite": {"status": "error", "precision": "int8", "parity": None, "size_bytes": 0, "messages": ["<script>alert(1)</script> crashed"]},
        },
    }


def test_page_says_why_and_escapes_what_it_quotes():
    page = report_page(synthetic_report())
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; crashed" in page  # the why of the error row, escaped
    assert "all 2 criteria met; closest to its limit: y: max |error| at 0.2 x the tolerance" in page
    assert page.count('class="plot error-histogram"') == 1 and 'id="plot-comparison"' in page


def test_page_without_matplotlib_says_the_plots_are_left_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError, as where it is not installed
    page = report_page(synthetic_report())
    assert "<svg" not in page and 'id="plots-missing"' in page and "matplotlib is not installed" in page
    assert 'data-target="onnx"' in page and "(plot left out: matplotlib is not installed)" in page


# --------------------------------------------------------------------------- in a real browser


def open_in_chromium(page: Path, folder: Path) -> tuple[str, list[str]]:
    """Render ``page`` in headless Chromium with every host unresolvable (the page must need no
    network): the DOM after rendering and the console messages. Saves folder/screenshot.png."""
    command = [
        CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={folder / 'chromium-profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
        "--window-size=1280,2400", f"--screenshot={folder / 'screenshot.png'}", "--dump-dom",
        "--enable-logging=stderr", "--v=0", page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


@needs_chromium
def test_the_browser_check_sees_console_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><p>x</p><script>console.error('boom')</script></body></html>")
    dom, console = open_in_chromium(page, tmp_path)
    assert "<p>x</p>" in dom and any("boom" in line for line in console)


def assert_self_contained(html: str) -> None:
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page refers to something on the network"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html)


@needs_chromium
@pytest.mark.slow
def test_convert_page_renders_in_chromium(tmp_path):
    out = tmp_path / "out"
    assert main(["convert", "examples:digits", "-t", "onnx", "-t", "tflite", "--samples", "8", "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert_self_contained(html)
    dom, console = open_in_chromium(out / "report.html", tmp_path)
    assert console == [], console
    report = json.loads((out / "report.json").read_text())
    for name, row in report["targets"].items():
        assert f'<tr class="target-row" data-target="{name}">' in dom and f'<section class="target" id="target-{name}"' in dom
        assert re.search(rf'<div class="plot error-histogram" data-target="{name}"><svg', dom), f"{name}'s histogram"
        assert row["accuracy"]["confusion"]["artifact"] and row["parity"]["error_histogram"]["counts"]
    assert re.search(r'<div class="plot" id="plot-comparison"><svg', dom)
    assert dom.count("<svg") == len(report["targets"]) + 1 and "Confusion matrix of the artifact" in dom
    assert (tmp_path / "screenshot.png").stat().st_size > 10_000

    # explain writes its page on the same base
    explained = tmp_path / "explained"
    assert main(["explain", str(out / "onnx" / "model.onnx"), "--reference", "examples:digits", "--out", str(explained)]) == 0
    assert_self_contained((explained / "explain.html").read_text())
    shots = tmp_path / "explain-shot"
    shots.mkdir()
    dom, console = open_in_chromium(explained / "explain.html", shots)
    layers = json.loads((explained / "explain.json").read_text())["layers"]
    assert console == [] and dom.count("<tr") == len(layers) + 1 and "every matched layer is within its tolerance" in dom


@needs_chromium
@pytest.mark.slow
def test_matrix_page_renders_in_chromium(tmp_path):
    config = tmp_path / "matrix.toml"
    config.write_text('targets = ["onnx"]\nsamples = 4\n[[models]]\nspec = "examples:digits"\nname = "digits"\n[[compression]]\nname = "p30"\nprune = 0.3\n')
    out = tmp_path / "out"
    assert main(["matrix", str(config), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert_self_contained(html)
    dom, console = open_in_chromium(out / "report.html", tmp_path)
    assert console == [], console
    cells = json.loads((out / "results.json").read_text())
    assert len(cells) == 2 and dom.count('<td class="cell"') == 2 and dom.count('<tr class="cell-row"') == 2
    assert re.search(r'<div class="plot sweep" data-model="digits"><svg', dom)
    # the cells side by side: a bar per cell in each panel, labelled with the cell's coordinates
    comparison = re.search(r'<div class="plot" id="plot-comparison">(<svg.*?</svg>)', dom, re.S)
    assert comparison and dom.count("<svg") == 2
    assert all(f"digits/{preset} onnx[fp32]" in comparison.group(1) for preset in ("none", "p30"))
    assert (tmp_path / "screenshot.png").stat().st_size > 10_000
    assert matrix_page(cells).count('<td class="cell"') == 2
    # each grid cell leads to its group's own page, the one with the histograms
    pages = re.findall(r'<td class="cell"[^>]*><a href="([^"]+)">', html)
    assert sorted(pages) == sorted(c["cell"]["page"] for c in cells) and len(set(pages)) == 2
    assert all('class="plot' in (out / page).read_text() for page in pages)
