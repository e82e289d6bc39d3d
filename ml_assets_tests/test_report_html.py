"""The report's plots are real PNGs of the promised size, and its HTML page stands on its own."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from ml_assets.lib import plots
from ml_assets.lib.report_html import MAX_TABLE_ROWS, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH_PX, HEIGHT_PX = int(plots.WIDTH * plots.DPI), int(plots.HEIGHT * plots.DPI)  # 450 x 315


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature and the chunk's CRC."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(data[12:29])
    assert data.endswith(b"IEND\xaeB`\x82")  # the file is complete
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    y = (rng.random(3_000) < 0.05).astype(int)
    challenger = 1 / (1 + np.exp(-rng.normal(-3 + 2.0 * y, 1)))
    champion = 1 / (1 + np.exp(-rng.normal(-3 + 1.5 * y, 1)))
    return y, {"challenger": challenger, "champion": champion}


def test_curve_plots_are_pngs_of_the_standard_size(scored):
    y, curves = scored
    for png in [
        plots.roc_curve_png(y, curves),
        plots.pr_curve_png(y, curves),
        plots.calibration_png(y, curves),
        plots.score_distribution_png(y, curves["challenger"], "challenger <scores>"),
    ]:
        assert _png_size(png) == (WIDTH_PX, HEIGHT_PX)
        assert len(png) < 150_000  # small enough to embed in Markdown metadata


def test_bar_plots_grow_with_the_number_of_bars():
    names = [f"feature_{i}" for i in range(30)]
    gains = list(np.linspace(1, 100, 30))
    few, many = plots.feature_importance_png(names, gains, top=3), plots.feature_importance_png(names, gains)
    assert _png_size(few) == (WIDTH_PX, HEIGHT_PX)
    assert _png_size(many)[0] == WIDTH_PX and _png_size(many)[1] > HEIGHT_PX  # 20 bars need more room
    drift = plots.drift_png({name: 0.01 * i for i, name in enumerate(names)} | {"empty": float("nan")}, 0.25)
    assert _png_size(drift)[0] == WIDTH_PX


def test_a_backfills_range_plots_are_one_png_each():
    """drift_report and live_performance draw these once for a range of days (a chart per day
    costs ~0.1 s): a heatmap as tall as the feature bars would be, and a standard-size line plot."""
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(45)]
    names = [f"feature_{i}" for i in range(20)]
    psi = {name: {d: 0.01 * i * (k % 3) for k, d in enumerate(days)} for i, name in enumerate(names)}
    heatmap = plots.drift_days_png(psi, 0.25)
    assert _png_size(heatmap) == _png_size(plots.drift_png({n: 0.1 for n in names}, 0.25))
    rates = {"batch:champion v1": {d: 0.005 for d in days}, "live:canary v2": {d: 0.007 for d in days[30:]}}
    lines = plots.alert_rates_days_png(rates, {"batch:champion v1": 0.005, "live:canary v2": 0.005})
    assert _png_size(lines) == (WIDTH_PX, HEIGHT_PX)
    assert len(heatmap) < 150_000 and len(lines) < 150_000


def test_plots_survive_degenerate_data():
    one_class = np.zeros(50, dtype=int)
    p = np.linspace(0, 1, 50)
    for png in [
        plots.roc_curve_png(one_class, {"model": p}),
        plots.pr_curve_png(one_class, {"model": p}),
        plots.calibration_png(one_class, {"model": p}),
        plots.roc_curve_png(one_class, {}),
        plots.score_distribution_png(np.array([], dtype=int), np.array([]), "no rows"),
        plots.feature_importance_png([], []),
        plots.drift_png({}, 0.2),
        plots.drift_days_png({}, 0.2),
        plots.drift_days_png({"amount": {date(2026, 1, 1): float("nan")}}, 0.2),
        plots.alert_rates_days_png({}, {}),
        plots.alert_rates_days_png(
            {"live:champion v1": {date(2026, 1, 1): 0.01}}, {"live:champion v1": float("nan")}
        ),
    ]:
        assert _png_size(png)[0] == WIDTH_PX


def _report_png() -> bytes:
    return plots.feature_importance_png(["amount", "hour_of_day"], [10.0, 5.0])


def _report(title="Validation of fraud_detector v7", **kw) -> str:
    args = {
        "sections": [("Verdict", "Challenger passes.\n\nSecond paragraph\nwith a kept line break.")],
        "images": {"importance": _report_png()},
        "tables": {"slices": pl.DataFrame({"slice": ["channel"], "value": ["<web>"], "auc": [0.91234567]})},
    }
    return render_report(title, **(args | kw))


def test_html_is_self_contained():
    page = _report()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    # Every src is a data URI, and it decodes to the very PNG that was passed in.
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == _report_png()


def test_html_escapes_text_everywhere():
    page = _report(
        title="<script>alert(1)</script>",
        sections=[("<b>heading</b>", "a < b & c")],
        tables={"t": pl.DataFrame({"<col>": ["<td>x</td>"]})},
    )
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;heading&lt;/b&gt;" in page and "a &lt; b &amp; c" in page
    assert "<th>&lt;col&gt;</th>" in page and "&lt;td&gt;x&lt;/td&gt;" in page


def test_html_places_images_and_tables_where_sections_ask():
    page = _report(
        sections=[
            ("Ranking", "The curves:\n[image:importance]\nThen the slices.\n[table:slices]"),
            ("Gates", "All passed."),
        ]
    )
    positions = [page.index(s) for s in ["<h2>Ranking", "<img", "Then the slices.", "<table", "<h2>Gates"]]
    assert positions == sorted(positions)
    assert "Figures" not in page and "Tables" not in page  # nothing left over to append
    assert '<td class="num">0.9123</td>' in page  # floats to 4 significant digits, right-aligned


def test_html_appends_what_no_section_placed_and_rejects_unknown_names():
    page = _report()
    assert page.index("<h2>Verdict") < page.index("<h2>Figures") < page.index("<img")
    assert page.index("<h2>Tables") < page.index("<table")
    assert "<p>Challenger passes.</p>" in page and "Second paragraph<br>\nwith a kept line break." in page
    with pytest.raises(KeyError):
        _report(sections=[("Oops", "[image:missing]")])


def test_html_tables_are_cut_and_format_values():
    frame = pl.DataFrame(
        {"n": list(range(MAX_TABLE_ROWS + 5)), "x": [float("nan")] + [None] * (MAX_TABLE_ROWS + 4)},
        schema={"n": pl.Int64, "x": pl.Float64},
    ).with_columns(pl.when(pl.col("n") == 1).then(1234567).otherwise(pl.col("n")).alias("n"))
    page = _report(tables={"big": frame})
    assert page.count("<tr>") == MAX_TABLE_ROWS + 1  # the header and the first MAX_TABLE_ROWS rows
    assert f"the first {MAX_TABLE_ROWS} of {MAX_TABLE_ROWS + 5:,} rows" in page
    assert '<td class="num">n/a</td>' in page and "<td></td>" in page  # NaN and null differ
    assert '<td class="num">1,234,567</td>' in page
