"""`dkdm tune`: Optuna studies over the distillation settings.

    config     TuneSettings, the `tune:` section of a profile (imported by dkdm.settings: keep it light)
    space      the search space and the student widths it may pick
    inputs     what every trial shares: teacher, diffusion, feature extractor, reference statistics
    objective  one trial: distil, report intermediate FD' (free of Optuna and MLflow)
    dist       several processes of one trial (torchrun): the leader reports, followers follow
    storage    journal file or database storage, worker identity, stale trials
    tracking   a study's trials as MLflow runs, the best trial's student registered
    study      the orchestrator: create or resume a study and run its trials
    commands   the typer app mounted as `dkdm tune`
"""
