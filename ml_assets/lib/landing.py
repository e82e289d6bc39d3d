"""Reading the landing zone as the contract says: which entries count, and each file as raw text.

Only `*.csv` and `*.csv.gz` regular files directly in a partition folder are read. Everything else
(upstream's `*.tmp` files, hidden files, folders, symbolic links, other names) is listed as ignored
with the reason, and never opened. Nothing here writes to landing.

A file becomes a frame of raw strings (empty field = null) with the line each record starts on, or
a `FileProblem` saying why it can't be read as the contract says. Parsing is polars' CSV reader;
the record structure (field counts, line numbers, quoting) is checked beforehand with numpy over
the bytes, so ragged rows and quoted newlines are caught exactly without a slow Python parse.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

LINE = "_source_line"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Entry:
    path: Path
    ignored_because: str | None = None  # None: this entry is a landing file to read


@dataclass(frozen=True)
class FileProblem:
    reason: str
    lines: int | None = None  # physical lines in the file, when it could be decoded


@dataclass(frozen=True)
class RawFile:
    header: list[str]
    rows: pl.DataFrame  # one String column per header name, plus LINE


def partition_dir(landing: Path, feed: str, day: str) -> Path:
    return landing / feed / f"date={day}"


def list_partition(folder: Path) -> list[Entry]:
    """Every entry of a partition folder, sorted by name, each marked read or ignored (and why)."""
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        name = path.name
        if name.startswith("."):
            why = "hidden entry"
        elif path.is_symlink():
            why = "symbolic link"
        elif path.is_dir():
            why = "folder"
        elif name.endswith(".tmp"):
            why = "temporary file (upstream renames it when complete)"
        elif not (name.endswith(".csv") or name.endswith(".csv.gz")):
            why = "not a *.csv or *.csv.gz file"
        elif not path.is_file():
            why = "not a regular file"
        else:
            why = None
        entries.append(Entry(path, why))
    return entries


def fingerprint(folder: Path) -> str:
    """What upstream has delivered in a partition folder, as a short hash: name, size and
    modification time of every file that counts (ignored entries don't). Ingestion records it
    in the lake for each day it ingests; the landing sensor compares it with the folder's now."""
    parts = []
    for entry in list_partition(folder):
        if entry.ignored_because is None:
            st = entry.path.stat()
            parts.append(f"{entry.path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _decode(path: Path) -> bytes | FileProblem:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            return FileProblem(f"gzip content is corrupt: {e}")
    if data.startswith(BOM):
        data = data[len(BOM) :]
    if b"\x00" in data:
        return FileProblem("not CSV: contains NUL bytes", data.count(b"\n") + 1)
    return data


@dataclass(frozen=True)
class _Records:
    starts: np.ndarray  # byte offset where each record starts
    ends: np.ndarray  # byte offset where it ends (exclusive, before its newline)
    lines: np.ndarray  # the line each record starts on (1-based)
    fields: np.ndarray  # its field count
    had_blank_lines: bool


def _simple_records(data: bytes, n_fields: int, total_lines: int) -> _Records | None:
    """The common case, without scanning every record: one record per line (no blank lines, no
    quoted newlines), and as many structural commas as a rectangular file has. polars rejects rows
    with too many fields itself, so equal totals mean no row has too few. Commas inside quotes
    are counted on the few lines that hold quotes. None when the file needs `_records`."""
    if b"\n\n" in data or b"\n\r\n" in data or data[:1] in (b"\n", b"\r"):
        return None
    n = total_lines - 1 if data.endswith(b"\n") else total_lines
    quoted_commas = 0
    if b'"' in data:
        buf = np.frombuffer(data, dtype=np.uint8)
        quotes = np.flatnonzero(buf == ord('"'))
        newlines = np.flatnonzero(buf == ord("\n"))
        line_of_quote = np.searchsorted(newlines, quotes)
        lines_with_quotes, per_line = np.unique(line_of_quote, return_counts=True)
        if (per_line % 2).any():  # a quoted field spans lines
            return None
        bounds = np.concatenate(([-1], newlines, [len(data)]))
        for i in lines_with_quotes:
            text = data[bounds[i] + 1 : bounds[i + 1]].decode("utf-8", "replace").rstrip("\r")
            fields = next(csv.reader([text]), [])
            quoted_commas += text.count(",") - (len(fields) - 1)
    if data.count(b",") - quoted_commas != (n_fields - 1) * n:
        return None
    lines = np.arange(1, n + 1)
    return _Records(lines, lines, lines, np.full(n, n_fields), False)


def _records(data: bytes) -> _Records | FileProblem:
    """Record boundaries of RFC 4180 text.

    A comma or newline is structural when an even number of quotes precedes it: that is RFC 4180's
    quoting, where an escaped quote ("") counts twice. Blank lines are not records.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buf == ord('"'))
    newlines = np.flatnonzero(buf == ord("\n"))
    commas = np.flatnonzero(buf == ord(","))
    if quotes.size % 2:
        return FileProblem("not CSV: a quoted field is never closed", newlines.size + 1)
    if quotes.size:
        newlines_s = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
        commas = commas[np.searchsorted(quotes, commas) % 2 == 0]
    else:
        newlines_s = newlines
    starts = np.concatenate(([0], newlines_s + 1))
    ends = np.concatenate((newlines_s, [buf.size]))  # exclusive, before the newline
    length = ends - starts
    has_cr = length > 0
    has_cr[has_cr] = buf[ends[has_cr] - 1] == ord("\r")
    blank = (length - has_cr) == 0
    # The empty "line" after a final newline is not a blank line polars would read as a row.
    inner_blank = bool(blank[:-1].any()) or bool(blank[-1] and length[-1] > 0)
    starts, ends = starts[~blank], ends[~blank]
    fields = np.diff(np.searchsorted(commas, np.concatenate((starts, ends[-1:])))) + 1
    lines = np.searchsorted(newlines, starts) + 1
    return _Records(starts, ends, lines, fields, inner_blank)


def read_file(path: Path) -> RawFile | FileProblem:
    """One landing file as raw strings, or the reason it can't be read as the contract says."""
    data = _decode(path)
    if isinstance(data, FileProblem):
        return data
    total_lines = data.count(b"\n") + 1
    header = _header(data)
    if isinstance(header, FileProblem):
        return FileProblem(header.reason, total_lines)
    records = _simple_records(data, len(header), total_lines) or _records(data)
    if isinstance(records, FileProblem):
        return records
    if ragged := _ragged(records, len(header), total_lines):
        return ragged
    lines = records.lines
    if records.had_blank_lines:
        # polars reads a blank line as a row of nulls: drop them so records and rows align.
        data = b"\n".join(data[s:e] for s, e in zip(records.starts, records.ends, strict=True))
    try:
        frame = pl.read_csv(
            data,
            new_columns=header,
            infer_schema=False,
            raise_if_empty=False,
            quote_char='"' if b'"' in data else None,
        )
    except pl.exceptions.PolarsError as e:
        if "utf-8" in str(e):
            return _not_utf8(data, total_lines)
        exact = _records(data)  # the quick count can miss rows that are too long and too short
        if isinstance(exact, FileProblem):
            return exact
        return _ragged(exact, len(header), total_lines) or FileProblem(
            f"not CSV: {str(e).splitlines()[0]}", total_lines
        )
    if frame.height != lines.size - 1:
        return FileProblem(f"not CSV: parsed {frame.height} rows from {lines.size - 1} records", total_lines)
    frame = frame.with_columns(
        pl.when(pl.col(c).str.len_bytes() > 0).then(pl.col(c)).alias(c) for c in header
    ).with_columns(pl.Series(LINE, lines[1:], dtype=pl.Int64))
    return RawFile(header, frame)


def _ragged(records: _Records, n_fields: int, total_lines: int) -> FileProblem | None:
    ragged = np.flatnonzero(records.fields != n_fields)
    if not ragged.size:
        return None
    shown = ", ".join(f"line {records.lines[i]} has {records.fields[i]}" for i in ragged[:5])
    return FileProblem(
        f"ragged rows: the header has {n_fields} fields but {ragged.size} rows differ ({shown})",
        total_lines,
    )


def _not_utf8(data: bytes, total_lines: int) -> FileProblem:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return FileProblem(f"not UTF-8: invalid byte at line {line}", total_lines)
    return FileProblem("not UTF-8", total_lines)


def _header(data: bytes) -> list[str] | FileProblem:
    """The header row's names (the first record, which may itself hold quoted newlines)."""
    first = data[: 1 << 16]
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(first) - 4:  # not just a character cut in half at the boundary
            return _not_utf8(data, 0)
        text = first[: e.start].decode("utf-8")
    try:
        names = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as e:
        return FileProblem(f"not CSV: header unreadable ({e})")
    if not names:
        return FileProblem("empty file: no header row")
    # ASCII blanks only: str.strip() would also take Unicode spaces (NBSP...), making a look-alike
    # name count as a contract column.
    names = [n.strip(" \t") for n in names]
    if any(not n for n in names):
        return FileProblem("header has an empty column name")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        return FileProblem(f"header repeats column(s): {', '.join(dupes)}")
    return names
