"""`python -m dkdm.tuning ...`: `dkdm tune` without the `dkdm` entry point."""
from dkdm.tuning.commands import app

app(prog_name="dkdm tune")
