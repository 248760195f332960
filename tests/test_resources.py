"""Resources checked before work (docs/reliability.md): memory for the inputs and the parity
run, a ``--out`` edgex cannot make a folder of, a disk too small for the run, and a write that
finds the disk full anyway.

The command-line cases run edgex as a user does (a subprocess) and read what it printed and
left; the full disk is a real 300 KB tmpfs, mounted in a private mount namespace (``unshare``)
or, as root, for the test alone; the test is skipped where neither is allowed.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgex.core import data, loading, resources
from edgex.core.errors import DiskFullError, ModelLoadError, UsageError
from edgex.core.loading import load_model, synthetic_input
from edgex.core.report import write_json_atomic
from edgex.core.settings import make_settings
from edgex.core.types import TensorSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, cgroups and tmpfs are Linux's")

NETS = "import torch\n\ndef conv():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())\n"


def _edgex(*args, cwd, preexec_fn=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgex.core.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy(), timeout=timeout, preexec_fn=preexec_fn)


def _one_line(err: str) -> str:
    """The one line edgex printed (the test fails on more lines, or a traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- memory


def test_a_huge_input_shape_is_refused_before_anything_is_allocated(tmp_path):
    """3.9 TiB of input for one sample: refused from the TensorSpec, in seconds, under an address
    space limit of 8 GiB -- an allocation of it would be a MemoryError, not this line."""
    import resource

    def limit_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    start = time.monotonic()
    done = _edgex("convert", "examples:digits", "-t", "onnx", "--input-shape", "1,3,600000,600000", "--out", tmp_path / "out",
                  cwd=tmp_path, preexec_fn=limit_address_space, timeout=120)
    seconds = time.monotonic() - start
    line = _one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert line.startswith("edgex: error: the inputs alone (1x3x600000x600000 float32, one sample) need 3.9 TiB and "), line
    assert "available; give a smaller --input-shape" in line and "MemoryError" not in line
    assert seconds < 60 and not (tmp_path / "out").exists()


def test_the_parity_run_is_refused_before_its_samples_are_drawn(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(NETS)
    model = load_model(f"{tmp_path / 'nets.py'}:conv", input_shapes=[(1, 3, 512, 512)])
    forward = resources.forward_of(model.module)
    plane = 512 * 512 * 4 * 4  # 1x4x512x512 float32: the conv's output, then the relu's
    assert forward.output_bytes == plane and forward.activation_bytes >= 2 * plane

    monkeypatch.setattr(resources, "memory", lambda *a: resources.Memory(1 << 30, "this machine"))
    drawn = []
    real = data.synthetic_samples
    monkeypatch.setattr(data, "synthetic_samples", lambda *a: drawn.append(a) or real(*a))
    with pytest.raises(UsageError) as refused:
        data.resolve_inputs(model, make_settings(samples=32))
    message = refused.value.message
    assert message == (
        "the parity run (32 samples of 1x3x512x512 float32 (3.0 MiB each); the reference's and the artifact's outputs "
        "(4.0 MiB per sample each); comparing them in float64 (40.0 MiB per sample); 8.0 MiB of activations in one "
        "forward pass) needs at least 1.6 GiB and this machine has 1.0 GiB available; give a smaller --input-shape or fewer --samples"
    ), message
    assert drawn == []
    inputs = data.resolve_inputs(model, make_settings(samples=8))  # 408 MiB: fits
    assert len(inputs.parity) == 8 and len(drawn) == 1


def test_the_comparison_holds_at_least_what_the_estimate_counts():
    """``COMPARE_COPIES`` float64 copies of each output element: a floor of what
    ``parity.compare`` holds (if it comes to hold less, lower the constant with it)."""
    import tracemalloc

    from edgex.core import parity

    elements = 1 << 20  # 4 samples of 4 x 65536
    reference = [[np.random.default_rng(i).standard_normal((4, elements // 16)).astype(np.float32)] for i in range(4)]
    actual = [[r[0] + np.float32(1e-6)] for r in reference]
    tracemalloc.start()
    try:
        parity.compare(reference, actual, ["output"], [parity.Tolerance(atol=1e-3, rtol=0.0, source="test")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= resources.COMPARE_COPIES * 8 * elements, peak


def test_the_measured_probe_computes_what_the_plain_one_did(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(NETS + "\ndef picky():\n    return torch.nn.Linear(5, 2)\n")
    with pytest.raises(ModelLoadError) as rejected:
        load_model(f"{tmp_path / 'nets.py'}:picky", input_shapes=[(1, 4)])
    assert rejected.value.message.startswith("the model rejected input shape (1, 4): RuntimeError: mat1 and mat2 shapes cannot be multiplied")

    class Broken:  # a measurement that breaks: the probe runs plainly, and nothing is recorded
        def __enter__(self):
            raise RuntimeError("no dispatch mode here")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(resources, "_live_bytes_mode", Broken)
    model = load_model(f"{tmp_path / 'nets.py'}:conv", input_shapes=[(1, 3, 8, 8)])
    assert model.output_names == ("output",) and resources.forward_of(model.module) is None


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32"])
def test_seeded_inputs_are_the_numbers_they_always_were(dtype, monkeypatch):
    """Drawn in chunks (7 elements here), the values and the generator's state after are those
    of the one whole float64 / int64 draw cast to the dtype, which every verdict so far used."""
    monkeypatch.setattr(loading, "DRAW_CHUNK", 7)
    spec = TensorSpec("x", (2, 3, 5, 3), dtype)
    old, new = np.random.default_rng(0), np.random.default_rng(0)
    floating = np.issubdtype(np.dtype(dtype), np.floating)
    expected = old.standard_normal(spec.shape).astype(dtype) if floating else old.integers(0, 8, size=spec.shape).astype(dtype)
    drawn = synthetic_input(spec, new)
    assert drawn.dtype == np.dtype(dtype) and drawn.shape == spec.shape and np.array_equal(drawn, expected)
    assert old.random() == new.random()


def _fake_proc(root: Path, cgroup: str, mountinfo: str, available_kb: int) -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kb} kB\nSwapFree: 0 kB\n")
    return proc


def test_available_memory_is_the_tightest_of_machine_and_cgroup(tmp_path):
    # cgroup v2: a limit of 4 GiB two levels up, 3 GiB used of which 1 GiB is reclaimable file cache
    v2 = tmp_path / "v2"
    leaf = v2 / "box" / "job"
    leaf.mkdir(parents=True)
    (v2 / "box" / "memory.max").write_text(f"{4 << 30}\n")
    (v2 / "box" / "memory.current").write_text(f"{3 << 30}\n")
    (v2 / "box" / "memory.stat").write_text(f"anon 1\ninactive_file {1 << 30}\n")
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.current").write_text(f"{1 << 20}\n")
    proc = _fake_proc(tmp_path / "a", "0::/box/job\n", f"30 20 0:26 / {v2} rw - cgroup2 cgroup2 rw\n", 64 << 20)
    found = resources.memory(proc)
    assert found == resources.Memory(2 << 30, "this process's memory cgroup (limit 4.0 GiB)")

    # cgroup v1, the container's own hierarchy mounted at its root; the machine is tighter here
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{8 << 30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{1 << 30}\n")
    (v1 / "memory.stat").write_text("total_inactive_file 0\n")
    proc = _fake_proc(tmp_path / "b", "4:memory:/docker/abc\n1:cpu:/\n", f"35 31 0:32 /docker/abc {v1} rw - cgroup cgroup rw,memory\n", 1024)
    assert resources.memory(proc) == resources.Memory(1024 * 1024, "this machine")
    (proc / "meminfo").write_text(f"MemAvailable: {64 << 20} kB\n")
    assert resources.memory(proc) == resources.Memory(7 << 30, "this process's memory cgroup (limit 8.0 GiB)")

    real = resources.available_memory()  # this machine, read for real
    assert real is not None and 0 < real


# --------------------------------------------------------------------------- the output folder and the disk


def test_out_under_a_file_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "somefile.txt").write_text("mine\n")
    done = _edgex("convert", "examples:digits", "-t", "onnx", "--samples", "2", "--out", "somefile.txt/sub", cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done.stderr) == "edgex: error: --out somefile.txt/sub: somefile.txt is a file, not a directory; choose another --out"
    assert (tmp_path / "somefile.txt").read_text() == "mine\n"


def _with_tmpfs(folder: Path, size: str, script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``sh -c script`` with a tmpfs of ``size`` mounted at ``folder``: in a private mount
    namespace (``unshare -rm``), else as root for the script's time; skipped where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = f"mount -t tmpfs -o size={size} tmpfs '{folder}'"
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True).returncode == 0:
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount} && {script}"], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    if os.geteuid() == 0 and subprocess.run(["sh", "-c", mount], capture_output=True).returncode == 0:
        try:
            return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)
    pytest.skip("cannot mount a tmpfs here (no `unshare -rm`, not root): the full-disk cases need one")


def test_a_disk_too_small_for_the_run_is_refused_before_work(tmp_path):
    disk = tmp_path / "disk"
    out = disk / "out"
    done = _with_tmpfs(disk, "300k", f"'{sys.executable}' -m edgex.core.cli convert examples:digits -t onnx --samples 2 --out '{out}'; echo \"rc=$?\"; ls -A '{disk}'")
    rc = int(done.stdout.split("rc=")[1].split()[0])
    assert "this run needs at least" in done.stderr, (
        "the run was not refused before work (does pipeline.convert pass disk=resources.disk_needed(...) to owned_out?)\n"
        + done.stdout + done.stderr
    )
    line = _one_line(done.stderr)
    assert rc == 3, done.stderr
    assert line.startswith(f"edgex: error: --out {out}: the disk (tmpfs mounted at {disk}) has "), line
    assert "free and this run needs at least 316.8 KiB (the model's 94.4 KiB of fp32 parameters for 1 artifact at fp32" in line
    assert line.endswith("; free some space there or choose another --out")
    left = done.stdout.split("rc=")[1].split("\n", 1)[1].split()
    assert left == [], left  # refused before work: not even --out was left behind


def test_a_report_meeting_a_full_disk_is_whole_or_absent(tmp_path):
    """A report.json replaced on a disk that fills up: the old one stays whole, no temporary
    file is left, and the error names the disk and the file (exit 3)."""
    disk = tmp_path / "disk"
    script = (
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from edgex.core.report import write_json_atomic\n"
        "from edgex.core.errors import DiskFullError\n"
        f"disk = Path({str(disk)!r})\n"
        "write_json_atomic(disk / 'report.json', {'old': True})\n"
        "with open(disk / 'fill', 'wb', buffering=0) as fh:\n"
        "    try:\n"
        "        while True:\n"
        "            fh.write(b'x' * 4096)\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    write_json_atomic(disk / 'report.json', {'new': 'x' * 100000})\n"
        "except DiskFullError as exc:\n"
        "    print(exc.exit_code, exc.message)\n"
        "print(sorted(p.name for p in disk.iterdir()), json.loads((disk / 'report.json').read_text()))\n"
    )
    done = _with_tmpfs(disk, "300k", f"'{sys.executable}' -c \"$0\"".replace("$0", script.replace('"', '\\"')))
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 2, done.stdout + done.stderr
    assert lines[0].startswith(f"3 no space left on tmpfs mounted at {disk}: ")
    assert lines[0].endswith(f"free of 300.0 KiB, while writing report.json (97.7 KiB) in {disk}; free some space there"), lines[0]
    assert lines[1] == "['fill', 'report.json'] {'old': True}"


def test_a_write_error_for_space_names_the_disk_and_the_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    exc = OSError(errno.ENOSPC, "No space left on device", str(out / ".edgex-scratch" / "exports" / "model.onnx"))
    assert resources.is_disk_full(exc) and not resources.is_disk_full(OSError(errno.EACCES, "denied"))
    message = resources.disk_full_message(exc, out)
    mount = resources.mount_of(out)
    assert message.startswith(f"no space left on {resources.describe_disk(out)}: ") and mount.point in message
    assert message.endswith(f", while writing {Path('.edgex-scratch/exports/model.onnx')} in --out {out}; free some space there or choose another --out")
    error = resources.disk_full_error(OSError(errno.EDQUOT, "Disk quota exceeded"), out)
    assert isinstance(error, DiskFullError) and error.exit_code == 3
    assert error.message.startswith("disk quota exceeded on ") and f"while writing into --out {out};" in error.message


def test_what_a_run_needs_on_disk_is_a_lower_bound(tmp_path):
    class Model:
        params = 1000

    assert resources.disk_needed(Model()).bytes == resources.FIXED_DISK
    need = resources.disk_needed(Model(), ["fp32", "int8", "int8"])
    assert need.bytes == resources.FIXED_DISK + 4000 + 1000 + 1000 + 4000
    assert need.what == "the model's 3.9 KiB of fp32 parameters for 1 artifact at fp32, 2 artifacts at int8 and 1 fp32 export, and 128.0 KiB of reports, logs and runtime caches"
    resources.check_disk(tmp_path, need)  # this disk has room: nothing raised
    free, _ = resources.disk_space(tmp_path)
    with pytest.raises(DiskFullError):
        resources.check_disk(tmp_path / "not" / "yet", resources.DiskNeed(free + (1 << 40), "a test"))


def test_a_report_write_failure_leaves_no_temporary_file(tmp_path, monkeypatch):
    write_json_atomic(tmp_path / "report.json", {"old": True})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DiskFullError) as failed:
        write_json_atomic(tmp_path / "report.json", {"new": True})
    assert "while writing report.json (18 B) in" in failed.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert json.loads((tmp_path / "report.json").read_text()) == {"old": True}
