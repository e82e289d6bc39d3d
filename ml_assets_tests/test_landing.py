"""Reading landing files: what counts as a file, and every way a file can be unreadable."""

from __future__ import annotations

import gzip
import os

import pytest

from ml_assets.lib.landing import FileProblem, list_partition, read_file


def _read(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return read_file(path)


def test_reads_rows_with_their_line_numbers(tmp_path):
    raw = _read(tmp_path, "a.csv", b"a,b\n1,2\n3,4\n")
    assert raw.header == ["a", "b"]
    assert raw.rows.rows() == [("1", "2", 2), ("3", "4", 3)]


@pytest.mark.parametrize(
    "data, rows",
    [
        (b"\xef\xbb\xbfa,b\r\n1,2\r\n", [("1", "2", 2)]),  # BOM and CRLF
        (b"a,b\n1,2", [("1", "2", 2)]),  # no final newline
        (b'a,b\n"x,y",2\n', [("x,y", "2", 2)]),  # quoted comma
        (b'a,b\r\n"x,\r\ny",2\r\n3,\r\n', [("x,\r\ny", "2", 2), ("3", None, 4)]),  # quoted CRLF
        (b'a,b\n"he said ""hi""",2\n', [('he said "hi"', "2", 2)]),  # escaped quote
        (b'a,b\n"multi\nline",3\n4,5\n', [("multi\nline", "3", 2), ("4", "5", 4)]),  # lines shift
        (b"a,b\n1,2\n\n\r\n3,4\n\n", [("1", "2", 2), ("3", "4", 5)]),  # blank lines skipped
        (b'a,b\n"",\n', [(None, None, 2)]),  # empty means missing
        (b"a,b\n", []),  # header only
    ],
)
def test_rfc4180_details(tmp_path, data, rows):
    assert _read(tmp_path, "f.csv", data).rows.rows() == rows


def test_gzip_is_read(tmp_path):
    assert _read(tmp_path, "f.csv.gz", gzip.compress(b"a,b\n1,2\n")).rows.height == 1


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("f.csv.gz", gzip.compress(b"a,b\n1,2\n" * 500)[:40], "gzip content is corrupt"),
        ("f.csv.gz", b"a,b\n1,2\n", "gzip content is corrupt"),
        ("f.csv", b"a,b\n\xe9,2\n", "not UTF-8: invalid byte at line 2"),
        ("f.csv", b"\xe9,b\n1,2\n", "not UTF-8: invalid byte at line 1"),
        ("f.csv", bytes(range(256)) * 4, "not CSV: contains NUL bytes"),
        ("f.csv", b"", "empty file"),
        (
            "f.csv",
            b"a,b\n1,2,3\n4,5\n",
            "ragged rows: the header has 2 fields but 1 rows differ (line 2 has 3)",
        ),
        (
            "f.csv",
            b"a,b\n1\n4,5\n",
            "ragged rows: the header has 2 fields but 1 rows differ (line 2 has 1)",
        ),
        ("f.csv", b"a,b\n1\n4,5,6\n", "(line 2 has 1, line 3 has 3)"),
        ("f.csv", b'a,b\n"unterminated,2\n3,4\n', "not CSV: a quoted field is never closed"),
        ("f.csv", b"a,a\n1,2\n", "header repeats column(s): a"),
        ("f.csv", b"a,,c\n1,2,3\n", "header has an empty column name"),
    ],
)
def test_unreadable_files_say_why(tmp_path, name, data, reason):
    problem = _read(tmp_path, name, data)
    assert isinstance(problem, FileProblem)
    assert reason in problem.reason


def test_only_csv_files_directly_in_the_folder_are_read(tmp_path):
    folder = tmp_path / "date=2026-01-15"
    folder.mkdir()
    for name in ["a.csv", "b.csv.gz", "c.csv.tmp", ".hidden.csv", "notes.txt", "d.CSV"]:
        (folder / name).write_bytes(b"x\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "e.csv").write_bytes(b"x\n")
    os.symlink(folder / "a.csv", folder / "link.csv")
    entries = {e.path.name: e.ignored_because for e in list_partition(folder)}
    assert entries["a.csv"] is None and entries["b.csv.gz"] is None
    assert entries["c.csv.tmp"].startswith("temporary file")
    assert entries[".hidden.csv"] == "hidden entry"
    assert entries["notes.txt"] == entries["d.CSV"] == "not a *.csv or *.csv.gz file"
    assert entries["sub"] == "folder"
    assert entries["link.csv"] == "symbolic link"
    assert "e.csv" not in entries


def test_missing_folder_is_empty(tmp_path):
    assert list_partition(tmp_path / "nope") == []
