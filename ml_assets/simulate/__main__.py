"""Write the landing feed (and the oracle) for a date range: `python -m ml_assets.simulate`."""

from __future__ import annotations

import argparse
import time
from datetime import date

from ml_assets.lib import paths
from ml_assets.simulate.generator import SimulatorConfig, simulate


def main(argv: list[str] | None = None) -> None:
    d = SimulatorConfig()
    ap = argparse.ArgumentParser(prog="python -m ml_assets.simulate", description=__doc__)
    ap.add_argument("--start", type=date.fromisoformat, default=d.start, help="first day (UTC)")
    ap.add_argument("--days", type=int, default=d.days, help="number of days")
    ap.add_argument("--transactions-per-day", type=int, default=d.transactions_per_day)
    ap.add_argument("--fraud-rate", type=float, default=d.base_fraud_rate, help="base fraud rate")
    ap.add_argument("--label-delay", type=int, default=d.label_delay_days, help="days until a label")
    ap.add_argument(
        "--drift-day", type=int, default=d.drift_day,
        help="day index from which the atm_cashout pattern appears (-1: never)",
    )  # fmt: skip
    ap.add_argument("--bad-row-rate", type=float, default=d.bad_row_rate)
    ap.add_argument("--files-per-day", type=int, default=d.files_per_day)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--if-empty", action="store_true", help="do nothing if landing has data")
    a = ap.parse_args(argv)
    landing = paths.landing_dir()
    if a.if_empty and any((landing / "transactions").glob("date=*")):
        print(f"landing already has data in {landing}; leaving it as it is")
        return
    cfg = SimulatorConfig(
        start=a.start,
        days=a.days,
        transactions_per_day=a.transactions_per_day,
        base_fraud_rate=a.fraud_rate,
        label_delay_days=a.label_delay,
        drift_day=None if a.drift_day is not None and a.drift_day < 0 else a.drift_day,
        bad_row_rate=a.bad_row_rate,
        files_per_day=a.files_per_day,
        seed=a.seed,
    )
    t0 = time.perf_counter()
    totals = simulate(cfg, landing, paths.simulator_dir() / "truth")
    print(
        f"wrote {totals['transactions']:,} transactions ({totals['frauds']:,} fraud, "
        f"{totals['corrupted']:,} deliberately broken rows) and {totals['labels']:,} labels "
        f"to {landing} in {time.perf_counter() - t0:.1f}s"
    )


if __name__ == "__main__":
    main()
