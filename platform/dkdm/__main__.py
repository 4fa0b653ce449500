"""`python -m dkdm ...` runs the CLI (what dvc.yaml's stage commands call)."""
from dkdm.cli import app

app(prog_name="dkdm")
