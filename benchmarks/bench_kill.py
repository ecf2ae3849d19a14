"""A driver SIGKILLed at random moments of a 10**5-shard run resumes without redoing a committed
shard (issue 26; docs/SCALE.md quotes the table).

    python benchmarks/bench_kill.py                          # 10**5 shards, 20 kills, local disk
    python benchmarks/bench_kill.py --s3 --gap-ms 0.2        # on moto's S3 server on 127.0.0.1
    python benchmarks/bench_kill.py --shards 2000 --kills 3 --fold-every 7   # the smoke test's

The child is benchmarks/synthetic_driver.py: no model, no Ray; it plans the shards, resumes as
the driver does and commits every shard not yet committed through the real `Manifest` (folds every
4,096 records; `--fold-every` sets the test-only PIPELINE_FOLD_EVERY), printing each once it is
acknowledged (durable by contract).

This script SIGKILLs it `--kills` times, resuming from the same folder each time: after a random
number of acknowledgements (spread over the run) plus a random delay, at a random moment of its
start-up and resume, and at the log's test-only kill points (PIPELINE_CRASH_AT after_log: a shard
durable, not yet acknowledged; fold_written / fold_switched: a fold's segment written, its
`_manifest.json` switched). After each child it checks: every acknowledged shard is committed,
nothing committed is lost, the commit files `_manifest.json` names (read with pyarrow and json,
not `Manifest`) hold each shard once and exactly the shards `Manifest.load` reports, and the
child acknowledged no shard that was committed when it started (redone = 0). At the end: all N
committed, the manifest complete, no stray file, `read_manifest()` returns every record. Exit
status 1 on a failed check. Times are wall clock on whatever else the machine runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from synthetic_driver import ROOT, pipeline_output_only, plan, record  # this folder's module

DRIVER = Path(__file__).with_name("synthetic_driver.py")
FAILURES: list[str] = []  # checks that failed
MODES = ("acks", "fold_written", "acks", "after_log", "acks", "fold_switched", "acks", "start")


class Run:
    """One child: its acknowledged shards (read by a thread), its resume line, its end."""

    def __init__(self, opt, redo: bool, env: dict, log):
        self.t0 = time.perf_counter()
        argv = [sys.executable, str(DRIVER), opt.location, str(opt.shards), str(opt.gap_ms / 1000)]
        self.proc = subprocess.Popen(argv + ["--redo"] * redo, env=env, stdout=subprocess.PIPE, stderr=log,
                                     text=True)
        self.acked, self.resume, self.ready_s = [], None, None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line[0] == "R":
                self.resume, self.ready_s = line.split()[1:], time.perf_counter() - self.t0
            elif line[0] != "D":
                self.acked.append(int(line))

    def alive(self, block: bool = False) -> bool:
        """Whether the child still runs; once it ended, its status and peak RSS (os.wait4, not
        Popen.poll: only wait4 returns the child's resource usage)."""
        if self.proc.returncode is None:
            pid, status, usage = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return True
            self.proc.returncode = os.waitstatus_to_exitcode(status)  # -9: SIGKILLed
            self.rss_mb = usage.ru_maxrss / 1024
            self.end_s = getattr(self, "end_s", time.perf_counter() - self.t0)
        return False

    def end(self, kill: bool) -> tuple[int, float]:
        """(exit status or -signal, peak RSS MB) once the child ended (killed first if `kill`)."""
        if kill and self.alive():
            self.end_s = time.perf_counter() - self.t0
            os.kill(self.proc.pid, signal.SIGKILL)
        self.alive(block=True)
        self.reader.join()
        return self.proc.returncode, self.rss_mb


def named_commit_files(folder) -> list[int]:
    """Shard indices in the commit files `_manifest.json` names (segments, then the log; a torn
    last line skipped), read with pyarrow and json, not with `Manifest`."""
    info = json.loads(folder.read_manifest())["commits"]
    shards = [s for seg in info["segments"] for s in folder.read_part(seg, ["_shard"])[0].to_pylist()]
    log = info["log"]
    bodies = [folder.read_file(log) or b""] if log.endswith(".jsonl") else \
        [folder.read_file(name) for name in folder.list_files(log)]
    for body in bodies:
        shards += [int(json.loads(line)["shard"]) for line in body.split(b"\n")[:-1]]
    return shards


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILURES.append(what)
        print(f"CHECK FAILED: {what}", flush=True)


def drive(opt) -> list[dict]:
    """Run children until one finishes, killing the first `opt.kills`; check after each."""
    from pipeline.output import commit_log
    from pipeline.output.manifest import FLUSH_S, Manifest
    from pipeline.output.output_folder import OutputFolder
    rng, folder, rows, n, kills = random.Random(opt.seed), OutputFolder.open(opt.location), [], opt.shards, \
        opt.kills
    shards, _ = plan(n)
    committed, ever_acked, ready_s = set(), set(), 1.0  # committed: after the previous child ended
    delay_s = 0.05 if folder.appendable else FLUSH_S  # after the acknowledgement (S3: a batch's span)
    env = {**os.environ, commit_log.FOLD_ENV: str(opt.fold_every)}
    env.pop("PIPELINE_CRASH_AT", None)
    with tempfile.TemporaryFile("w+") as log:
        for k in range(kills + 1):
            mode = MODES[k % len(MODES)] if k < kills else "none"
            point = {"fold_written": f"fold_written:{rng.randint(1, 3)}",
                     "fold_switched": f"fold_switched:{rng.randint(1, 3)}",
                     # the Nth shard durable; on S3 a batch of shards is (the first has one shard)
                     "after_log": f"after_log:{rng.randint(1, opt.fold_every) if folder.appendable else 1}",
                     }.get(mode)
            run = Run(opt, opt.redo and k > 0, {**env, "PIPELINE_CRASH_AT": point} if point else env, log)
            left = n - len(committed)
            if mode == "acks":  # a spread over what is left, then a random moment
                target = max(1, int(left * rng.uniform(0.5, 1.5) / (kills - k + 1)))
                while len(run.acked) < target and run.alive():
                    time.sleep(0.001)
                time.sleep(rng.uniform(0, delay_s))
            elif mode == "start":  # during start-up, load, strays, the resume's fold
                time.sleep(rng.uniform(0, ready_s))
            status, rss = run.end(kill=mode in ("acks", "start"))
            if status not in (0, -signal.SIGKILL):
                log.seek(0)
                sys.exit(f"the child failed (exit {status}):\n{log.read()[-3000:]}")
            ready_s = run.ready_s or ready_s
            manifest = Manifest.load(folder)  # what the next resume will find
            now = set(manifest.committed().tolist()) if manifest else set()
            acked = set(run.acked)
            redone = acked & committed
            check(not redone, f"run {k}: {len(redone)} committed shards redone, e.g. {sorted(redone)[:5]}")
            check(len(acked) == len(run.acked), f"run {k}: a shard acknowledged twice")
            check(acked <= now and ever_acked <= now, f"run {k}: acknowledged shards not committed")
            check(committed <= now, f"run {k}: {len(committed - now)} committed shards lost")
            if manifest:
                named = named_commit_files(folder)
                check(len(named) == len(set(named)), f"run {k}: a shard twice in the commit files")
                check(set(named) == now, f"run {k}: the commit files and Manifest.load differ")
                # A sample of the records (its own generator: rng's draws must not depend on timing)
                sample = random.Random(k).sample(sorted(now), min(200, len(now)))
                check(all(manifest.shards[f"{s:06d}"] == record(shards[s]) for s in sample),
                      f"run {k}: a committed record changed")
            ever_acked |= acked
            rows.append({"run": k, "mode": point or mode, "start": len(committed), "acked": len(acked),
                         "after": len(now), "unacked": len(now - committed - acked), "redone": len(redone),
                         "resume": run.resume, "end_s": run.end_s, "rss_mb": rss, "status": status})
            committed = now
            if status == 0:
                break
    return rows


def final_check(location: str, n: int) -> None:
    """All n committed with their records, the manifest complete, no stray commit file."""
    from pipeline.output.manifest import Manifest, read_manifest
    from pipeline.output.output_folder import OutputFolder
    shards, _ = plan(n)
    folder = OutputFolder.open(location)
    data = read_manifest(location)
    check(data["complete"], "the manifest is not complete")
    got = dict(data["shards"].items())
    check(got == {s.id: record(s) for s in shards}, f"read_manifest: {len(got)} records, not the {n}")
    strays = folder.stray_files(Manifest.load(folder).files())
    check(not strays, f"stray files left: {strays[:5]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=100_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fold-every", type=int, default=4096,
                    help="log records per fold (4,096 is the pipeline's; smaller reaches folds sooner)")
    ap.add_argument("--s3", action="store_true", help="the folder on moto's S3 server on 127.0.0.1")
    ap.add_argument("--gap-ms", type=float, default=0.0,
                    help="the child sleeps this long before each commit and calls `Manifest.tick` (a "
                         "driver waiting for its workers); on S3 it spreads the run over more batches")
    ap.add_argument("--dir", help="parent of the local output folder (default: the temp dir)")
    ap.add_argument("--redo", action="store_true", help=argparse.SUPPRESS)  # resumes redo all (a broken run)
    opt = ap.parse_args()
    pipeline_output_only()
    moto = None
    with tempfile.TemporaryDirectory(prefix="bench-kill-", dir=opt.dir) as tmp:
        opt.location = tmp
        if opt.s3:
            sys.path.insert(0, str(ROOT / "tests"))
            from s3_server import Moto  # a dev dependency: moto's server on 127.0.0.1
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
            moto = Moto()
            opt.location = moto.uri("bench/kill")
        print(f"# {_cpu()}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
              f"{opt.shards:,} shards, fold every {opt.fold_every}, {'S3 (moto)' if moto else 'local disk'}\n")
        t0 = time.perf_counter()
        rows = drive(opt)
        wall = time.perf_counter() - t0
        print("| run | ended (s after start) | committed at start | resume load s | resume s (start-up, load, "
              "strays, fold) | acknowledged | committed after | committed, not acknowledged | redone "
              "| peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            load, ready = (f"{float(x):.3f}" for x in r["resume"][:2]) if r["resume"] else ("–", "–")
            end = ("finished" if r["status"] == 0 else f"killed: {r['mode']}") + f" ({r['end_s']:.1f})"
            print(f"| {r['run']} | {end} | {r['start']:,} | {load} | {ready} | {r['acked']:,} | {r['after']:,} "
                  f"| {r['unacked']:,} | {r['redone']:,} | {r['rss_mb']:.0f} |")
        final_check(opt.location, opt.shards)
        if moto:
            moto.stop()
    kills = sum(r["status"] != 0 for r in rows)
    print(f"\nkills: {kills}; redone: {sum(r['redone'] for r in rows)}; all {opt.shards:,} committed: "
          f"{'yes' if not FAILURES else 'NO'}; wall {wall:.0f} s; parent peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if FAILURES:
        sys.exit(f"{len(FAILURES)} check(s) failed")


def _cpu() -> str:  # lscpu's model name (benchlib's machine() would import torch)
    names = (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    return next(names, "unknown CPU")


if __name__ == "__main__":
    main()
