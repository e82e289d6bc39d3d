"""Helpers that turn results into Dagster UI metadata (tables, schemas, embedded images)."""

import base64
from collections.abc import Iterable, Sequence

import dagster as dg
import polars as pl


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def frame_markdown(frame: pl.DataFrame, max_rows: int = 20) -> str:
    return markdown_table(frame.columns, frame.head(max_rows).rows())


def table_schema(schema: pl.Schema | dict) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in schema.items()])


def png_markdown(png: bytes, alt: str) -> str:
    """An image embedded in Markdown metadata, so the UI shows it without leaving the page."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
