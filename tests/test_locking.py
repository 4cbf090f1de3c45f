"""``locking.hold``: one writer per directory; the second is refused naming the holder; a killed holder
(SIGKILL) never blocks the next writer."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from diffusion_objectives import errors, locking

HOLD_FOREVER = """
import sys, time
from diffusion_objectives import locking
with locking.hold(sys.argv[1], "holder-test"):
    print("locked", flush=True)
    time.sleep(600)
"""


def _start_holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_FOREVER, str(directory)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_records_the_holder_and_is_released_on_exit(tmp_path):
    with locking.hold(tmp_path / "run", "diffobj train") as lock:
        info = locking.holder(tmp_path / "run")
        assert info == {"pid": os.getpid(), "host": socket.gethostname(), "started": lock.started,
                        "command": "diffobj train"}
    assert locking.holder(tmp_path / "run") is None
    with locking.hold(tmp_path / "run", "again"):  # released: a second hold succeeds
        pass


def test_second_writer_in_the_same_process_is_refused_naming_the_holder(tmp_path):
    with locking.hold(tmp_path, "first writer"):
        with pytest.raises(locking.LockedError) as info:
            with locking.hold(tmp_path, "second writer"):
                pass
    assert isinstance(info.value, errors.OptionError)
    msg = str(info.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "first writer" in msg


def test_second_writer_in_another_process_is_refused_until_the_holder_is_killed(tmp_path):
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(locking.LockedError, match=f"pid {proc.pid} .*holder-test"):
            with locking.hold(tmp_path, "me"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    stale = json.loads((tmp_path / locking.LOCK_NAME).read_text())
    assert stale["pid"] == proc.pid  # the record survives the kill ...
    deadline = time.monotonic() + 10
    with locking.hold(tmp_path, "me") as lock:  # ... but the kernel released the lock: no block
        assert time.monotonic() < deadline and lock.pid == os.getpid()
        assert locking.holder(tmp_path)["pid"] == os.getpid()
