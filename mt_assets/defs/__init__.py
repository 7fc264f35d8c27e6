"""Dagster: assets, checks, sensors, schedules and resources over the core. Thin by design:
every decision lives in the core modules; this package only maps them onto Dagster."""

from __future__ import annotations

from mt_assets.defs.definitions import build_definitions, manifest_from_env

defs = build_definitions(manifest_from_env())

__all__ = ["build_definitions", "defs", "manifest_from_env"]
