"""One module per pipeline stage; each exposes `run(ctx, ...)` and is called by a thin CLI command."""
