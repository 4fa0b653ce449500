"""The search space of a study: rho, learning rate, student width (valid for its preset family), method.

Widths are checked by building the student on the meta device, so whatever the architecture refuses
(GroupNorm's 32 groups and the attention head size of an ADM UNet, a DiT's heads and sin-cos table) is
never offered to the sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dkdm.tuning.config import TuneSettings

if TYPE_CHECKING:
    from optuna import Trial

# The key that sets a preset's width, per family.
WIDTH_KEYS = {"adm-unet": "num_channels", "dit": "hidden_size", "ldm-unet": "model_channels"}
# Candidate widths relative to the preset's own; the invalid ones are dropped per family.
WIDTH_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
# Rounding grain of the candidates: multiples of 8 keep widths friendly to tensor cores.
WIDTH_GRAIN = 8


def width_key(preset: str) -> str:
    from training.models import get_preset

    family = get_preset(preset)["family"]
    if family not in WIDTH_KEYS:
        raise ValueError(f"tune: student preset {preset!r} is a {family!r} model; widths can be searched for "
                         f"{', '.join(WIDTH_KEYS)} students only")
    return WIDTH_KEYS[family]


def student_config(preset: str, width: int) -> dict[str, Any]:
    """The preset's model config with its width replaced."""
    from training.models import get_preset

    config = get_preset(preset)
    config[width_key(preset)] = int(width)
    return config


def width_problem(preset: str, width: int) -> str | None:
    """Why `width` cannot build the student (None when it can)."""
    import torch

    from training.models import create_model

    try:
        with torch.device("meta"):
            create_model(student_config(preset, width))
    except (ValueError, RuntimeError, AssertionError) as err:
        return str(err).splitlines()[0]
    return None


def width_choices(preset: str) -> list[int]:
    """Up to one buildable width near each of WIDTH_FACTORS x the preset's own (which is always included)."""
    from training.models import get_preset

    base = int(get_preset(preset)[width_key(preset)])
    first = max(WIDTH_GRAIN, -(-base // 2 // WIDTH_GRAIN) * WIDTH_GRAIN)
    valid = [w for w in range(first, 2 * base + 1, WIDTH_GRAIN) if width_problem(preset, w) is None]
    chosen = {base}
    for factor in WIDTH_FACTORS:
        if valid:
            chosen.add(min(valid, key=lambda w: (abs(w - base * factor), w)))
    return sorted(chosen)


def check_widths(preset: str, widths: list[int]) -> list[int]:
    for width in widths:
        problem = width_problem(preset, width)
        if problem is not None:
            raise ValueError(f"tune.widths: {width_key(preset)}={width} cannot build {preset!r} ({problem})")
    return sorted(set(widths))


@dataclass(frozen=True)
class TrialParams:
    """One point of the space; `rho` is None for methods that do not use a dynamic pool."""

    method: str
    lr: float
    width: int
    width_key: str
    rho: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "lr": self.lr, self.width_key: self.width}
        if self.rho is not None:
            out["rho"] = self.rho
        return out


@dataclass(frozen=True)
class SearchSpace:
    rho: tuple[float, float]
    lr: tuple[float, float]
    widths: tuple[int, ...]
    width_key: str
    methods: tuple[str, ...]

    @classmethod
    def build(cls, tune: TuneSettings, *, student: str, default_method: str, num_timesteps: int,
              method_choice: bool | None = None) -> SearchSpace:
        """The space of one profile. rho's lower end is raised to 1/T: below it the pool would be empty."""
        widths = check_widths(student, tune.widths) if tune.widths else width_choices(student)
        low, high = tune.rho
        low = max(low, 1.0 / num_timesteps)
        if low > high:
            raise ValueError(f"tune.rho: the range [{tune.rho[0]}, {high}] holds no rho with a non-empty pool "
                             f"for T={num_timesteps} (rho must be at least 1/T = {1.0 / num_timesteps:.4g})")
        choose = tune.method_choice if method_choice is None else method_choice
        methods = tuple(tune.methods) if choose else (default_method,)
        return cls(rho=(low, high), lr=tune.lr, widths=tuple(widths), width_key=width_key(student), methods=methods)

    def suggest(self, trial: Trial) -> TrialParams:
        """Draw a point through an Optuna trial; rho exists only where the method uses it (a conditional space)."""
        method = trial.suggest_categorical("method", list(self.methods)) if len(self.methods) > 1 else self.methods[0]
        lr = trial.suggest_float("lr", self.lr[0], self.lr[1], log=True)
        width = trial.suggest_categorical(self.width_key, list(self.widths))
        rho = trial.suggest_float("rho", self.rho[0], self.rho[1], log=True) if method == "dynamic" else None
        return TrialParams(method=method, lr=lr, width=int(width), width_key=self.width_key, rho=rho)

    def describe(self) -> dict[str, str]:
        return {
            "space.rho": f"log[{self.rho[0]:.4g}, {self.rho[1]:.4g}]",
            "space.lr": f"log[{self.lr[0]:.4g}, {self.lr[1]:.4g}]",
            f"space.{self.width_key}": ",".join(str(w) for w in self.widths),
            "space.method": ",".join(self.methods),
        }
