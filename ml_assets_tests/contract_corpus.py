"""Values at the edges of the landing contract, shared by the tests that run them through
ingestion, the service and the dbt features: what the contract accepts, and hostile values it
must refuse with one clear reason."""

from __future__ import annotations

DAY = "2026-01-15"

ID = "must be 1-64 chars of [A-Za-z0-9_-]"
MCC = "merchant_category must be exactly 4 digits (MCC)"
DECIMAL = "amount must be a decimal number"
ISO = "event_time must be ISO-8601 with a Z or an offset"
YEARS = "event_time must be within years 0001-9999 in UTC"
# Adversarial values: digits, letters and spaces of other scripts where the contract means ASCII,
# look-alikes, and instants outside years 0001-9999 (which /predict answered with a 500).
# Each with the one reason every path must give: (field, value, reason).
HOSTILE = [
    ("merchant_category", "٥٤١١", MCC),  # Arabic-Indic digits (once accepted: dbt's cast failed the day)
    ("merchant_category", "５４１１", MCC),  # fullwidth digits
    ("merchant_category", "۵۴۱۱", MCC),  # Extended Arabic-Indic
    ("merchant_category", "५४११", MCC),  # Devanagari
    ("merchant_category", "𝟓𝟒𝟏𝟏", MCC),  # mathematical bold
    ("merchant_category", "²411", MCC),  # str.isdigit() says yes, int() says no
    ("merchant_category", "5411\u00a0", MCC),  # no-break space
    ("merchant_category", "\u20075411", MCC),  # figure space
    ("transaction_id", "tx\u00a01", f"transaction_id {ID}"),
    ("transaction_id", "t\u0445-1", f"transaction_id {ID}"),  # Cyrillic х
    ("transaction_id", "tx_１", f"transaction_id {ID}"),
    ("transaction_id", "tx٣", f"transaction_id {ID}"),
    ("card_id", "card\u200b1", f"card_id {ID}"),  # zero-width space
    ("card_id", "ｃard1", f"card_id {ID}"),
    ("merchant_id", "m\u20111", f"merchant_id {ID}"),  # non-breaking hyphen
    ("merchant_id", "m_ſ", f"merchant_id {ID}"),  # long s: [a-z] under Unicode case folding
    ("currency", "\u0415UR", "currency must be 3 uppercase letters"),  # Cyrillic Е
    ("currency", "ÉUR", "currency must be 3 uppercase letters"),
    ("currency", "ＥＵＲ", "currency must be 3 uppercase letters"),
    ("currency", "\u212aRW", "currency must be 3 uppercase letters"),  # Kelvin sign
    ("country", "\u0391\u0392", "country must be 2 uppercase letters"),  # Greek Α Β
    ("country", "FＲ", "country must be 2 uppercase letters"),
    ("channel", "p\u043es", "channel must be one of pos, ecom, atm"),  # Cyrillic о
    ("channel", "pos\u200b", "channel must be one of pos, ecom, atm"),
    ("amount", "١٢.٥", DECIMAL),
    ("amount", "１２.５", DECIMAL),
    ("amount", "12٫5", DECIMAL),  # Arabic decimal separator
    ("amount", "12.5\u00a0", DECIMAL),
    ("amount", "\u200912.5", DECIMAL),
    ("event_time", f"{DAY}T10:00:00\u00a0Z", ISO),  # polars' %+ alone took these spaces
    ("event_time", f"{DAY}T10:00:00\u2009+02:00", ISO),
    ("event_time", f"\u3000{DAY}T10:00:00Z", ISO),
    ("event_time", f" {DAY}T10:00:00Z", ISO),
    ("event_time", f"{DAY}T10:00:00UTC", ISO),
    ("event_time", f"{DAY}T１0:00:00Z", ISO),
    ("event_time", "٢٠٢٦-01-15T10:00:00Z", ISO),
    ("event_time", f"{DAY}T10:00:00.٥Z", ISO),
    ("event_time", f"{DAY}T10:00:00+٠٢:00", ISO),
    ("event_time", "2026-1-15T10:00:00Z", ISO),
    ("event_time", "10000-01-01T00:00:00Z", ISO),
    ("event_time", "0000-01-15T10:00:00Z", YEARS),
    ("event_time", "-0001-01-15T10:00:00Z", YEARS),
    ("event_time", "+12026-01-15T10:00:00Z", YEARS),
    ("event_time", "0001-01-01T00:00:00+01:00", YEARS),  # the offset takes it before year 1
    ("event_time", "9999-12-31T23:59:59-01:00", YEARS),  # ... and after year 9999
    ("device_id", "e\u0301" * 33, "device_id must be at most 64 chars"),  # 66 code points
]


# Valid rows at every edge the contract allows, as overrides of a valid transaction (ids unique).
EDGES = [
    {"transaction_id": "T" * 64, "card_id": "C" * 64, "merchant_id": "M" * 64},
    {"transaction_id": "x", "card_id": "y", "merchant_id": "z"},
    {"transaction_id": "_-_", "card_id": "-", "merchant_id": "_"},
    {"transaction_id": "e-device-64", "device_id": "d" * 64},
    {"transaction_id": "e-device-text", "device_id": "appareil é ✓ ١٢ \u00a0"},  # free text
    {"transaction_id": "e-device-csv", "device_id": 'a,b\n"c",\r\nd'},  # quoted on the way
    {"transaction_id": "e-amount-min", "amount": "0.01"},
    {"transaction_id": "e-amount-max", "amount": "1000000"},
    {"transaction_id": "e-amount-max-2", "amount": "1000000.000000"},
    {"transaction_id": "e-amount-long", "amount": "0.123456789012345678"},
    {"transaction_id": "e-amount-tiny", "amount": "0.0000000000001"},  # > 0, under 12 decimals
    {"transaction_id": "e-amount-plus", "amount": "+3"},
    {"transaction_id": "e-amount-dot", "amount": ".5"},
    {"transaction_id": "e-amount-dot-2", "amount": "5."},
    {"transaction_id": "e-amount-zeros", "amount": "00012.50"},
    {"transaction_id": "e-plus-14", "event_time": "2026-01-16T13:59:59+14:00"},  # 23:59:59Z
    {"transaction_id": "e-minus-12", "event_time": "2026-01-15T11:59:59.999999-12:00"},
    {"transaction_id": "e-midnight", "event_time": "2026-01-15T14:00:00+14:00"},  # 00:00:00Z
    {"transaction_id": "e-first", "event_time": "2026-01-15T00:00:00Z"},
    {"transaction_id": "e-last", "event_time": "2026-01-15T23:59:59.999999Z"},
    {"transaction_id": "e-lower", "event_time": "2026-01-15t10:00:00z"},
    {"transaction_id": "e-space", "event_time": "2026-01-15 10:00:00Z"},
    {"transaction_id": "e-basic-offset", "event_time": "2026-01-15T12:00:00+0200"},
    {"transaction_id": "e-nanos", "event_time": "2026-01-15T10:00:00.123456789Z"},
    {"transaction_id": "e-minus-zero", "event_time": "2026-01-15T10:00:00-00:00"},
    {"transaction_id": "e-mcc-0", "merchant_category": "0000", "channel": "ecom"},
    {"transaction_id": "e-mcc-9", "merchant_category": "9999", "channel": "atm"},
    {"transaction_id": "e-codes", "currency": "XXX", "country": "ZZ"},
]
