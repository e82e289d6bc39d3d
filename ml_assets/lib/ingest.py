"""Validate one landing partition against its contract: good rows for bronze, the rest quarantined.

Nothing here raises on bad data. Every rejected row keeps its source file, line, raw values and
every reason it failed; a file that can't be read becomes one quarantine record with its reason;
the good rows of the same partition go on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from ml_assets.lib.contract import TYPED, Feed, pandera_schema, with_parsed
from ml_assets.lib.landing import LINE, FileProblem, list_partition, read_file

log = logging.getLogger(__name__)
SOURCE = "_source_file"
QUARANTINE_SCHEMA = {
    "source_file": pl.String(),
    "line": pl.Int64(),  # null for a file-level record
    "level": pl.String(),  # "row" or "file"
    "reasons": pl.List(pl.String()),
    "raw": pl.String(),  # the raw values as JSON (row level), or null
    "rows": pl.Int64(),  # rows this record stands for: 1, or the lines of a rejected file
}


@dataclass
class IngestResult:
    feed: Feed
    partition: date
    bronze: pl.DataFrame
    quarantine: pl.DataFrame
    files_read: list[str] = field(default_factory=list)
    files_ignored: dict[str, str] = field(default_factory=dict)
    unknown_columns: dict[str, list[str]] = field(default_factory=dict)  # column -> files
    rows_in: int = 0
    duplicates_dropped: int = 0
    # Where the time went: reading and structure checks, validation (parsing included), typing and
    # deduplication. The writes are the caller's.
    seconds_by_phase: Counter = field(default_factory=Counter)

    @property
    def quarantined_rows(self) -> int:
        return int(self.quarantine.filter(pl.col("level") == "row").height)

    @property
    def quarantined_files(self) -> int:
        return int(self.quarantine.filter(pl.col("level") == "file").height)

    def stats(self) -> dict[str, int]:
        return {
            "rows_in": self.rows_in,
            "rows_ingested": self.bronze.height,
            "rows_quarantined": self.quarantined_rows,
            "files_quarantined": self.quarantined_files,
            "duplicates_dropped": self.duplicates_dropped,
            "files_read": len(self.files_read),
            "files_ignored": len(self.files_ignored),
        }


def _quarantine(feed: Feed, partition: date, records: list[pl.DataFrame]) -> pl.DataFrame:
    schema = {**QUARANTINE_SCHEMA, feed.partition_column: pl.Date()}
    if not records:
        return pl.DataFrame(schema=schema)
    return (
        pl.concat([r.with_columns(pl.lit(partition).alias(feed.partition_column)) for r in records])
        .select(schema.keys())
        .cast(schema)
        .sort("source_file", "line", nulls_last=False)
    )


def _file_record(name: str, problem: FileProblem) -> pl.DataFrame:
    rows = max(1, (problem.lines or 1) - 1)
    return pl.DataFrame(
        {
            "source_file": [name],
            "line": [None],
            "level": ["file"],
            "reasons": [[problem.reason]],
            "raw": [None],
            "rows": [rows],
        },
        schema=QUARANTINE_SCHEMA,
    )


def _row_records(rows: pl.DataFrame, columns: list[str], reasons: pl.Series) -> pl.DataFrame:
    """Quarantine records for `rows` (raw strings), keeping every raw value they arrived with."""
    return rows.select(
        pl.col(SOURCE).alias("source_file"),
        pl.col(LINE).alias("line"),
        pl.lit("row").alias("level"),
        reasons.alias("reasons"),
        pl.struct(columns).struct.json_encode().alias("raw"),
        pl.lit(1, pl.Int64).alias("rows"),
    )


def _reason(column: str, check: str) -> str:
    return f"{column} is required" if check == "not_nullable" else check


def _validate(feed: Feed, partition: date, name: str, raw: pl.DataFrame, header: list[str]):
    """Split one file's raw rows into (good rows, quarantine records), naming every broken rule."""
    import pandera.errors

    schema = pandera_schema(feed, partition)
    raw = with_parsed(feed, raw)
    try:
        schema.validate(raw, lazy=True)
        return raw, None
    except pandera.errors.SchemaErrors as e:
        failures = e.failure_cases
    if failures["index"].null_count():
        # A failure not tied to a row (pandera reports it on the frame): reject the whole file.
        whole = failures.filter(pl.col("index").is_null())
        reason = "; ".join(f"{c}: {k}" for c, k in whole.select("column", "check").unique().rows())
        return raw.head(0), _file_record(name, FileProblem(f"schema: {reason}", raw.height + 1))
    reasons = (
        failures.select(
            pl.col("index").cast(pl.Int64),
            pl.struct("column", "check")
            .map_elements(lambda s: _reason(s["column"], s["check"]), return_dtype=pl.String)
            .alias("reason"),
        )
        .unique()
        .sort("index", "reason")
        .group_by("index", maintain_order=True)
        .agg("reason")
    )
    bad_idx = reasons["index"]
    rows = raw.with_row_index("_i").filter(pl.col("_i").is_in(bad_idx.implode())).drop("_i")
    records = _row_records(rows, header, reasons["reason"])
    good = raw.with_row_index("_i").filter(~pl.col("_i").is_in(bad_idx.implode())).drop("_i")
    return good, records


def _typed(feed: Feed, partition: date, good: pl.DataFrame) -> pl.DataFrame:
    schema = feed.bronze_schema()
    return good.select(
        *[pl.col(TYPED + n).alias(n) for n in feed.columns],
        pl.lit(partition).alias(feed.partition_column),
        pl.col(SOURCE),
        pl.col(LINE),
    ).cast(schema)


def ingest_partition(
    feed: Feed,
    folder: Path,
    partition: date,
    ingested_elsewhere: pl.DataFrame | None = None,
) -> IngestResult:
    """Validate every landing file of one partition folder.

    `ingested_elsewhere` holds the keys (and partition) already in bronze for other partitions:
    a row whose key is there is a conflicting duplicate across the feed.
    """
    result = IngestResult(feed, partition, pl.DataFrame(schema=feed.bronze_schema()), pl.DataFrame())
    goods: list[pl.DataFrame] = []
    quarantine: list[pl.DataFrame] = []
    contract_columns = list(feed.columns)
    for entry in list_partition(folder):
        name = entry.path.name
        if entry.ignored_because:
            result.files_ignored[name] = entry.ignored_because
            continue
        result.files_read.append(name)
        started = time.perf_counter()
        raw = read_file(entry.path)
        result.seconds_by_phase["read"] += time.perf_counter() - started
        if isinstance(raw, FileProblem):
            quarantine.append(_file_record(name, raw))
            result.rows_in += max(1, (raw.lines or 1) - 1)
            continue
        result.rows_in += raw.rows.height
        missing = [c for c in feed.required if c not in raw.header]
        if missing:
            problem = FileProblem(f"missing required column(s): {', '.join(missing)}", raw.rows.height + 1)
            quarantine.append(_file_record(name, problem))
            continue
        for extra in (c for c in raw.header if c not in feed.columns):
            result.unknown_columns.setdefault(extra, []).append(name)
        frame = raw.rows.with_columns(
            *[pl.lit(None, pl.String).alias(c) for c in contract_columns if c not in raw.header],
            pl.lit(name).alias(SOURCE),
        )
        started = time.perf_counter()
        good, records = _validate(feed, partition, name, frame, raw.header)
        result.seconds_by_phase["validate"] += time.perf_counter() - started
        if records is not None:
            quarantine.append(records)
        if good.height:
            goods.append(good.select(*contract_columns, *[TYPED + c for c in contract_columns], SOURCE, LINE))
    started = time.perf_counter()
    if goods:
        raw_good = pl.concat(goods)
        typed = _typed(feed, partition, raw_good)
        typed, conflicts, dropped = _deduplicate(feed, typed, ingested_elsewhere)
        result.duplicates_dropped = dropped
        if conflicts is not None:
            quarantine.append(
                conflicts.join(raw_good, on=[SOURCE, LINE]).pipe(
                    lambda f: _row_records(f, contract_columns, f["reason"])
                )
            )
        result.bronze = typed  # already in (file, line) order
    result.quarantine = _quarantine(feed, partition, quarantine)
    result.seconds_by_phase["deduplicate"] += time.perf_counter() - started
    return result


def _deduplicate(feed: Feed, typed: pl.DataFrame, elsewhere: pl.DataFrame | None):
    """Drop identical copies of a row (keeping the first), and pull out conflicting ones.

    Returns (rows to keep, conflicts as (source, line, reason) or None, identical copies dropped).
    """
    key = list(feed.key)
    conflicts: list[pl.DataFrame] = []
    # Hash the key first: exact duplicates share a hash, and a u64 groups far faster than text.
    # Rows whose hash repeats are then compared exactly.
    copies = typed.select(pl.struct(key).hash().is_duplicated()).to_series()
    if copies.any():
        copies = typed.select(pl.len().over(key) > 1).to_series()
    dropped = 0
    if copies.any():
        repeated = typed.filter(copies)
        versions = repeated.group_by(key).agg(
            pl.struct(list(feed.columns)).n_unique().alias("_versions"), pl.len().alias("_n")
        )
        clash = versions.filter(pl.col("_versions") > 1)
        reason = pl.format(
            "conflicting duplicate: {} copies of this {} disagree", "_n", pl.lit("/".join(key))
        )
        conflicts.append(
            repeated.join(clash, on=key).select(SOURCE, LINE, pl.concat_list(reason).alias("reason"))
        )
        keep = typed.join(clash.select(key), on=key, how="anti", maintain_order="left")
        first = keep.filter(pl.int_range(pl.len()).over(key) == 0)
        dropped = keep.height - first.height
        typed = first
    if elsewhere is not None and elsewhere.height:
        partition = feed.partition_column
        clash = typed.join(elsewhere.rename({partition: "_other"}), on=key)
        if clash.height:
            reason = pl.format(
                "conflicting duplicate: this {} was already ingested for {} {}",
                pl.lit("/".join(key)), pl.lit(partition), pl.col("_other"),
            )  # fmt: skip
            conflicts.append(clash.select(SOURCE, LINE, pl.concat_list(reason).alias("reason")))
            typed = typed.join(clash.select(key), on=key, how="anti", maintain_order="left")
    found = pl.concat(conflicts) if conflicts else None
    return typed, found, dropped
