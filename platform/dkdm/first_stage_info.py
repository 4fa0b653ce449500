"""Reading back what the `autoencoder` stage recorded, with one clear line when it is not a usable first stage."""
from __future__ import annotations

import json
import math
from pathlib import Path

from dkdm.errors import DkdmError


def read_scale_factor(info: Path) -> float:
    """The latent scale factor in the autoencoder stage's info.json.

    The file may be a pixel profile's record, or be left by an import that stopped before the scale factor was
    measured; either way the latent stages cannot run, and the user is told which file and what to run.
    """
    rerun = "run `dkdm autoencoder` with this latent profile (or `dvc repro autoencoder`)"
    try:
        record = json.loads(Path(info).read_text())
    except (OSError, ValueError) as err:
        raise DkdmError(f"{info}: unreadable first-stage record ({err}); {rerun}") from None
    if not isinstance(record, dict) or record.get("space") != "latent":
        space = record.get("space") if isinstance(record, dict) else None
        raise DkdmError(f"{info}: records no first stage (space: {space}), so the latent scale factor is unknown; "
                        f"{rerun}")
    try:
        value = float(record["scale_factor"])
    except (KeyError, TypeError, ValueError):
        raise DkdmError(f"{info}: the first-stage import did not finish (no scale_factor recorded); {rerun}") from None
    if not math.isfinite(value) or value <= 0:
        raise DkdmError(f"{info}: scale_factor {value} is not a positive number; {rerun}")
    return value
