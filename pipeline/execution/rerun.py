"""A rerun of a finished output: answered before Ray starts when there is nothing to do.

Rerunning a job whose output is complete (a cron job, a `ray job submit` sent again) used to
start Ray and the actors and load the model only to find every shard committed, then read every
part's ids again; with a large model on a GPU that is minutes. `nothing_to_do` gives the result
from the manifest instead when nothing can differ: the driver calls it right after the early
settings check (`driver._check_engine_preview`), before Ray.
"""
from __future__ import annotations

import dataclasses
import json
import time

from workers import EngineConfig

from ..config import PipelineConfig
from ..inputs.shards import ShardPlan, plan_record
from ..output.finish import RunResult
from ..output.manifest import Manifest, check_resumable
from ..output.output_folder import ERRORS_FILE, OutputFolder, absolute, redact
from ..output.progress import RunStats


def recorded_options(engine_options: dict) -> dict:
    """The engine options as the manifest keeps them: the model as an absolute, redacted path."""
    options = dict(engine_options)
    if options.get("model"):
        options["model"] = redact(absolute(options["model"]))
    return options


def _with_defaults(options: dict | None) -> dict | None:
    """Engine options with every unset option at its default, as JSON holds them: the CLI passes
    some defaults by name that a Python call leaves out."""
    if options is None:
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(EngineConfig)
                if f.default is not dataclasses.MISSING}
    return json.loads(json.dumps({**defaults, **options}))


def nothing_to_do(earlier: Manifest | None, folder: OutputFolder, source, config: PipelineConfig,
                   engine_options: dict, preview: dict, t0: float) -> RunResult | None:
    """The result of rerunning a finished run, without Ray, an actor or a model load, or None
    when the run has work to do (or may have: then it goes on as a resume, which checks all).

    It applies when the output is complete, the input and this config's part of the fingerprint
    are the output's (else FingerprintMismatch, as a resume would raise), the engine options are
    the ones the output recorded and its model folder hashes the same (`preview`), no reuse= is
    asked for, and every committed part (and `_errors.parquet` when rows were reported) is there
    with its size. Then the engine would be built as before; only a dtype or attention backend
    left at "auto" could resolve otherwise on other hardware, and no vector would be written
    with it."""
    if earlier is None or not earlier.data.get("complete") or config.reuse or source is None:
        return None
    recorded = earlier.fingerprint.get("engine") or {}
    if any(recorded.get(k) != v for k, v in json.loads(json.dumps(preview)).items()):
        return None
    if _with_defaults(earlier.data.get("engine_options")) != _with_defaults(recorded_options(engine_options)):
        return None
    manifest = Manifest.load(folder)  # the shard records too: every part must still be there
    rows = manifest.plan["shard_rows"]  # a resumed run keeps its output's shard size
    shards = ShardPlan(source.fragments, rows)
    plan = plan_record(source, rows, len(shards))
    check_resumable(manifest, {**manifest.fingerprint, **config.fingerprint()}, plan)
    listing, summary = folder.sizes(), manifest.data.get("summary") or {}
    reported = summary.get("bad_rows_total", 0) or summary.get("duplicate_ids", 0)
    if (reported and ERRORS_FILE not in listing) or len(manifest.shards) != len(shards) or any(
            listing.get(r["path"]) != r["bytes"] for _, r in manifest.records()):
        return None  # a part (or the errors file) is missing or changed: the resume redoes it
    stats = RunStats(rows=0, rows_total=int(manifest.shards.total("rows")), tokens=0,
                     seconds=time.perf_counter() - t0, startup_seconds=0.0, truncated=0,
                     bad_rows=0, shards=0, resumed_shards=len(shards), retries=0, workers=(),
                     bad_rows_total=summary.get("bad_rows_total", 0),
                     duplicate_ids=summary.get("duplicate_ids", 0))
    if config.progress or config.progress is None:
        print(f"nothing to do: {folder} holds the finished run of this input with these settings "
              f"({len(shards):,} shard(s), {stats.rows_total:,} rows); pass overwrite=True "
              "(--overwrite) to redo it", flush=True)
    return RunResult(output=folder.location, stats=stats, manifest=manifest.data, errors=())
