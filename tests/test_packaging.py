"""A plain wheel carries every module and data file, and `edgex --help` stays light."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("edgex-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in (("core", "edgex/core"), ("plugins", "edgex/plugins"), ("targets", "edgex/targets"), ("examples", "edgex/examples")):
        for source in (ROOT / folder).rglob("*"):
            if source.is_file() and "__pycache__" not in source.parts and source.suffix in (".py", ".json", ".toml", ".pt", ".html"):
                assert f"{package}/{source.relative_to(ROOT / folder).as_posix()}" in names, source
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edgex = edgex.core.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_top_level_help_imports_not_even_numpy():
    """``edgex --help`` lists the commands from the command line's own modules: the compress
    stage's package imports its numpy half on first use (core/compression/__init__.py)."""
    code = "import sys\nfrom edgex.core.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint('NUMPY', 'numpy' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "NUMPY False" in done.stdout and "convert" in done.stdout, done.stdout[-500:]


def test_help_and_targets_import_no_framework():
    code = (
        "import sys\n"
        "from edgex.core.cli import main\n"
        "for argv in (['targets'], ['plugins']):\n"
        "    main(argv)\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'coremltools', 'onnx2tf', 'onnxruntime', 'onnx', 'tflite_micro', 'ai_edge_litert', 'matplotlib', 'jinja2') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in done.stdout, done.stdout[-500:]
