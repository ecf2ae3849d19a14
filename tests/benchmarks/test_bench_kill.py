"""benchmarks/bench_kill.py at a tiny size (its 10**5-shard figures are in docs/SCALE.md): a
synthetic driver SIGKILLed 3 times (after acknowledgements and at a fold's kill point) resumes
without redoing a committed shard; and the script's checks catch a resume that does redo.
The folder is on /dev/shm where there is one: a SIGKILL keeps what the page cache holds, so the
disk's fsyncs (seconds here) change nothing these tests check."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess:
    where = ["--dir", "/dev/shm"] if os.path.isdir("/dev/shm") else []
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kill.py"), *where, *args],
                          capture_output=True, text=True, timeout=300)


def _table(out: str) -> list[dict]:
    lines = [ln for ln in out.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[1:]]


def _n(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_killed_synthetic_driver_resumes_without_redoing_a_shard():
    done = _bench("--shards", "2000", "--kills", "3", "--fold-every", "7", "--seed", "0")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = _table(done.stdout)
    kinds = [re.sub(r":\d+ \(.*", "", r["ended (s after start)"]).split(" (")[0] for r in rows]  # no fold no.
    assert kinds == ["killed: acks", "killed: fold_written", "killed: acks", "finished"]
    assert all(_n(r["redone"]) == 0 for r in rows)
    for before, after in zip(rows, rows[1:]):  # each resume starts from what the kill left
        assert _n(after["committed at start"]) == _n(before["committed after"])
        assert _n(before["committed after"]) >= _n(before["committed at start"]) + _n(before["acknowledged"])
    assert sum(_n(r["acknowledged"]) + _n(r["committed, not acknowledged"]) for r in rows) == 2000
    assert "kills: 3; redone: 0; all 2,000 committed: yes" in done.stdout


def test_the_checks_catch_a_resume_that_redoes_committed_shards():
    done = _bench("--shards", "200", "--kills", "1", "--fold-every", "7", "--redo")
    assert done.returncode == 1 and "check(s) failed" in done.stderr
    rows = _table(done.stdout)
    assert _n(rows[1]["redone"]) == _n(rows[0]["committed after"]) > 0
    assert "committed shards redone" in done.stdout
