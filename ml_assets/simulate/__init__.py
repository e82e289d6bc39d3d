"""The simulated upstream feed: `python -m ml_assets.simulate --help`."""
