"""dkdm: the platform around the `training` core: typed settings and profiles, the `dkdm` CLI, MLflow tracking
and the DVC pipeline stages.

Public API:
    load_settings(profile_file, overrides=None) -> Settings      (dkdm.settings)
    profiles.resolve(name) / profiles.use(name) / profiles.available()
    tracking.start_run(settings, stage=..., run_name=...) -> RunTracker (a training.train.tracker.Tracker)
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
