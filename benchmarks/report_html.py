"""The matrix report page's weight and render time in headless Chromium (issue 11).

    python benchmarks/report_html.py [--out DIR] [--reuse]

Runs a real ``edgex matrix`` of 4 cheap models (examples:digits and tests/models.py's
resnet_tiny, mobilenet_tiny, lstm_tiny) x 3 targets (onnx, jetson, coreml) at their default
precisions, then opens its report.html in headless Chromium (``/usr/bin/chromium``, every host
unresolvable) and prints:

- the page's size in bytes (the target: under 2 MB);
- its render time: the page's own navigation timing (start to the end of the load event, layout
  and SVG included), read from a copy of the page with a one-line script added (the page itself
  has none), the median of 5 loads (the target: under 2 s);
- Chromium's whole process time for the page and for an empty page, for scale (start-up dominates).

The same for the heaviest of the groups' own pages (``cells/<model>--<preset>/<precision>/report.html``,
the convert page: a histogram per target and the comparison panels), for the weight of the plots.

``--reuse`` measures the matrix already in ``--out`` instead of running it again. Nothing is
asserted (tests/test_report_html.py checks the page); this prints the figure docs/reports.md quotes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "tests" / "models.py"
CONFIG = f"""targets = ["onnx", "jetson", "coreml"]
samples = 8
[[models]]
spec = "examples:digits"
name = "digits"
[[models]]
spec = "{MODELS}:resnet_tiny"
name = "resnet_tiny"
[[models]]
spec = "{MODELS}:mobilenet_tiny"
name = "mobilenet_tiny"
[[models]]
spec = "{MODELS}:lstm_tiny"
name = "lstm_tiny"
"""
TIMING = (
    "<script>addEventListener('load', () => setTimeout(() => {"
    "const t = performance.getEntriesByType('navigation')[0];"
    "document.body.setAttribute('data-render-ms', (t.loadEventEnd - t.startTime).toFixed(1));}, 0));</script>"
)


def chromium(page: Path, profile: Path) -> tuple[float, str]:
    """(process seconds, DOM after load) of one headless Chromium run on ``page``."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("no chromium on PATH (apt-get install chromium)")
    command = [
        binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--dump-dom", page.as_uri(),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgex-report-html-bench")
    parser.add_argument("--reuse", action="store_true", help="measure the matrix already in --out")
    args = parser.parse_args()
    out = args.out / "matrix"
    if not args.reuse:
        args.out.mkdir(parents=True, exist_ok=True)
        config = args.out / "matrix.toml"
        config.write_text(CONFIG)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgex.core.cli", "matrix", str(config), "--out", str(out)], stdout=subprocess.DEVNULL, check=False)
        print(f"matrix: 4 models x 3 targets in {time.perf_counter() - start:.0f} s")
    profile = args.out / "chromium-profile"
    empty = args.out / "empty.html"
    empty.write_text("<!doctype html><title>empty</title>")
    baseline = statistics.median(chromium(empty, profile)[0] for _ in range(3))
    print(f"chromium process for an empty page: {baseline:.2f} s")
    heaviest = max(out.glob("cells/*/*/report.html"), key=lambda p: p.stat().st_size)
    for label, page in (("matrix report.html", out / "report.html"), (f"heaviest group page {heaviest.relative_to(out)}", heaviest)):
        measure(label, page, args.out, profile)


def measure(label: str, page: Path, work: Path, profile: Path) -> None:
    html = page.read_text()
    timed = work / "timed.html"
    timed.write_text(html.replace("</body>", TIMING + "</body>"))
    renders, processes = [], []
    for _ in range(5):
        seconds, dom = chromium(timed, profile)
        found = re.search(r'data-render-ms="([0-9.]+)"', dom)
        if found is None:
            sys.exit("the timing script did not report (the page did not finish loading?)")
        renders.append(float(found.group(1)))
        processes.append(seconds)
    size, cells = page.stat().st_size, html.count('<td class="cell"')
    print(f"{label}: {size} bytes ({size / 1e6:.3f} MB), {cells} grid cells, {html.count('<svg')} plots")
    print(f"  render (navigation start to load end, median of 5): {statistics.median(renders):.1f} ms (all: {', '.join(f'{r:.0f}' for r in renders)})")
    print(f"  chromium process: {statistics.median(processes):.2f} s")

if __name__ == "__main__":
    main()
