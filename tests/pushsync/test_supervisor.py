"""The supervisor behind `pushsync worker` and `pushsync scheduler`, with real processes: a
child that exits by itself is started again with a log line saying why; bad options are not
retried forever; signals reach the child; a killed supervisor leaves no orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ..e2e.harness import wait_for


def _run_supervisor(tmp_path: Path, child_code: str) -> subprocess.Popen:
    """A supervisor process whose child runs ``child_code`` (with STATE, a directory)."""
    child = tmp_path / "child.py"
    child.write_text(f"import os, sys, time, signal\nSTATE = {str(tmp_path)!r}\n" + textwrap.dedent(child_code))
    script = (f"import logging, sys\nlogging.basicConfig(level=logging.INFO)\n"
              f"from pushsync.supervisor import supervise\n"
              f"sys.exit(supervise([sys.executable, {str(child)!r}], 'test child'))\n")
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _starts(tmp_path: Path) -> list[str]:
    path = tmp_path / "starts"
    return path.read_text().split() if path.exists() else []


COUNT_START = """
with open(os.path.join(STATE, "starts"), "a") as f:
    f.write(f"{os.getpid()}\\n")
n = len(open(os.path.join(STATE, "starts")).read().split())
"""


def test_a_child_that_exits_by_itself_is_started_again_with_the_reason_logged(tmp_path):
    sup = _run_supervisor(tmp_path, COUNT_START + """
if n <= 2:
    sys.exit(1)          # like Celery's "Unrecoverable error" exit
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.1)
""")
    try:
        wait_for(lambda: len(_starts(tmp_path)) == 3, timeout=15, what="third start")
        time.sleep(0.5)
        assert sup.poll() is None
    finally:
        sup.send_signal(signal.SIGTERM)
        out = sup.communicate(timeout=10)[0]
    assert sup.returncode == 0, out  # the child's own exit code, after a clean stop
    assert out.count("stopped by itself") == 2 and "exit code 1" in out


def test_bad_options_are_not_restarted(tmp_path):
    sup = _run_supervisor(tmp_path, COUNT_START + "sys.exit(64)\n")
    out = sup.communicate(timeout=10)[0]
    assert sup.returncode == 64 and len(_starts(tmp_path)) == 1 and "not restarting" in out


def test_sigterm_reaches_the_child_and_is_not_answered_with_a_restart(tmp_path):
    sup = _run_supervisor(tmp_path, COUNT_START + """
def stop(*_):
    open(os.path.join(STATE, "got-term"), "w").close()
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.1)
""")
    wait_for(lambda: len(_starts(tmp_path)) == 1, timeout=10, what="child start")
    sup.send_signal(signal.SIGTERM)
    sup.communicate(timeout=10)
    assert sup.returncode == 3 and (tmp_path / "got-term").exists() and len(_starts(tmp_path)) == 1


def test_a_killed_supervisor_takes_its_child_with_it(tmp_path):
    sup = _run_supervisor(tmp_path, COUNT_START + """
while True:
    time.sleep(0.1)
""")
    wait_for(lambda: len(_starts(tmp_path)) == 1, timeout=10, what="child start")
    child_pid = int(_starts(tmp_path)[0])
    sup.send_signal(signal.SIGKILL)
    sup.wait(5)

    def gone() -> bool:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return True
        # a zombie reparented to init counts as gone
        stat = Path(f"/proc/{child_pid}/stat")
        return stat.exists() and stat.read_text().split()[2] == "Z"

    wait_for(gone, timeout=10, what="the orphaned child to exit")


def _pushsync(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
    env["PUSHSYNC_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing may be reached before the options are checked
    return subprocess.run([sys.executable, "-m", "pushsync.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_the_worker_refuses_options_celery_refuses_in_one_line_before_supervising():
    for args, says in ((["--bogus-option"], "No such option '--bogus-option'"),
                       (["-c", "abc"], "Invalid value for '-c' / '--concurrency'"),
                       (["-c", "2", "--prefetch"], "No such option '--prefetch'")):
        started = time.monotonic()
        run = _pushsync("worker", *args)
        assert run.returncode == 2, (args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pushsync: worker: ") and says in lines[0], run.stderr
        assert "Traceback" not in run.stderr and "starting it again" not in run.stderr
        assert time.monotonic() - started < 15


def test_the_worker_help_is_celerys_and_starts_nothing():
    run = _pushsync("worker", "--help")
    assert run.returncode == 0, run.stderr
    assert "--concurrency" in run.stdout and "starting" not in run.stderr
