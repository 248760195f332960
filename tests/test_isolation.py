"""core/isolation.py directly: results, errors, crashes, timeouts and events across the fork."""

import os
import signal
import time

import pytest

from edgex.core.errors import EdgexError, TargetError, UsageError
from edgex.core.isolation import RemoteError, isolation_mode, start_isolated


@pytest.fixture
def forked(monkeypatch):
    monkeypatch.setenv("EDGEX_ISOLATION", "fork")
    assert isolation_mode() == "fork"


def test_a_child_returns_its_value_from_another_process(forked):
    job = start_isolated(lambda send: {"pid": os.getpid(), "values": [1, 2.5]}, what="target t")
    result = job.wait()
    assert result["values"] == [1, 2.5] and result["pid"] != os.getpid()


def test_an_edgex_error_comes_back_with_its_message_and_exit_code(forked):
    def work(send):
        raise UsageError("the artifact is not an int8 model\nsecond line")

    with pytest.raises(RemoteError) as info:
        start_isolated(work, what="target t").wait()
    assert info.value.message == "the artifact is not an int8 model" and info.value.exit_code == 2
    assert "UsageError" in info.value.remote_traceback and isinstance(info.value, TargetError)


def test_any_other_exception_is_exit_3_named_by_its_type(forked):
    def work(send):
        raise ValueError("bad shape")

    with pytest.raises(RemoteError) as info:
        start_isolated(work, what="target t").wait()
    assert info.value.message == "ValueError: bad shape" and info.value.exit_code == 3


def test_a_child_killed_by_a_signal_is_a_target_error_naming_it(forked, tmp_path):
    log = tmp_path / "t.log"

    def work(send):
        os.kill(os.getpid(), signal.SIGSEGV)

    with pytest.raises(TargetError, match=rf"^target t crashed with signal SIGSEGV \(log: {log}\)$") as info:
        start_isolated(work, what="target t", log_path=str(log)).wait()
    assert not isinstance(info.value, RemoteError)
    assert "Fatal Python error" in log.read_text()  # faulthandler left the crash's stack in the log


def test_a_child_that_runs_too_long_times_out_and_is_ended(forked):
    def work(send):
        send("pid", os.getpid())
        time.sleep(60)

    pids = []
    start = time.monotonic()
    with pytest.raises(TargetError, match="target t timed out after 0.5 s"):
        start_isolated(work, what="target t", timeout=0.5).wait(lambda kind, pid: pids.append(pid))
    assert time.monotonic() - start < 10
    with pytest.raises(ProcessLookupError):  # the child is gone (killed and reaped)
        os.kill(pids[0], 0)


def test_events_sent_by_the_child_reach_on_event_in_order(forked):
    def work(send):
        send("converted", 1.5)
        send("progress", {"done": 0.5})
        return "ok"

    events = []
    assert start_isolated(work, what="target t").wait(lambda kind, payload: events.append((kind, payload))) == "ok"
    assert events == [("converted", 1.5), ("progress", {"done": 0.5})]


def test_the_child_writes_its_output_to_the_log(forked, tmp_path, capfd):
    log = tmp_path / "t.log"

    def work(send):  # native converters write to the file descriptors, past Python's sys.stdout
        os.write(1, b"converter chatter\n")
        os.write(2, b"native stderr\n")

    start_isolated(work, what="target t", log_path=str(log)).wait()
    assert log.read_text() == "converter chatter\nnative stderr\n"
    captured = capfd.readouterr()
    assert "chatter" not in captured.out and "native" not in captured.err


def test_cancel_ends_the_child(forked):
    job = start_isolated(lambda send: time.sleep(60), what="target t")
    job.cancel()
    assert not job.process.is_alive() and job.process.exitcode == -signal.SIGKILL


def test_isolation_none_runs_in_process(monkeypatch):
    monkeypatch.setenv("EDGEX_ISOLATION", "none")
    events = []

    def work(send):
        send("converted", os.getpid())
        return os.getpid()

    job = start_isolated(work, what="target t")
    assert job.process is None
    assert job.wait(lambda kind, payload: events.append(payload)) == os.getpid() and events == [os.getpid()]

    def fails(send):
        raise UsageError("in-process errors are the originals")

    with pytest.raises(UsageError) as info:  # not wrapped as a RemoteError
        start_isolated(fails, what="target t").wait()
    assert type(info.value) is UsageError


def test_an_unknown_isolation_mode_falls_back_to_the_default(monkeypatch):
    monkeypatch.setenv("EDGEX_ISOLATION", "threads")
    assert isolation_mode() == "fork"  # these tests run on Linux


def test_a_child_lowers_through_jax_after_the_parent_did(forked):
    """litert-torch lowers through JAX, whose MLIR contexts share one thread pool. Once a process
    has lowered a module with several functions, that pool has threads, which a fork does not
    copy: a child's first verification waited on them forever (CI hung so, a litert-torch
    conversion in the test process before a forked tflite one)."""
    jax = pytest.importorskip("jax")

    def lowered():
        steps = [jax.jit(lambda x, k=k: jax.numpy.sin(x) * k) for k in range(8)]  # a function each

        def chain(x):
            for step in steps:
                x = step(x) + 1
            return x

        return jax.jit(chain).lower(jax.numpy.ones(4)).as_text().count("func.func")

    functions = lowered()  # the parent's pool now has threads
    assert functions > 2
    assert start_isolated(lambda send: lowered(), what="target t", timeout=60).wait() == functions


def test_a_child_never_collects_its_parents_objects_even_after_a_nested_start(forked):
    """A forked child must never garbage-collect what it was forked with: destroying an
    onnxruntime session the parent left to the collector waits on worker threads the fork did
    not copy, and the child hangs (seen under pytest-xdist: an mcu conversion hung in its recipe
    search). The parent freezes its objects before the fork; a child's own nested start (a
    converter path) once unfroze them all, the inherited ones included."""
    import gc

    def child(send):
        inherited = gc.get_freeze_count()
        start_isolated(lambda send: "converted", what="a converter path").wait()
        return inherited, gc.get_freeze_count()

    inherited, after_nested_start = start_isolated(child, what="target t", timeout=60).wait()
    assert inherited > 1000, inherited  # the parent's objects: the test process holds many
    assert after_nested_start >= inherited, f"the child unfroze what it was forked with ({inherited} -> {after_nested_start})"
