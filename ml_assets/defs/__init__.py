"""Dagster definitions, one folder per pipeline stage (= asset group). Loaded by definitions.py."""
