"""The paper's claims as pairwise comparisons "A is better (lower) than B" on one metric, plus `reversals`: pairs
whose significant opposite contradicts the claim. The rule that turns them into verdicts, at every budget of the
curves, lives in `dkdm.reproduce.budgets`; it is fixed before the results are read.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["reproduced", "not reproduced", "inconclusive"]
Metric = Literal["fd", "fd_teacher"]


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    paper: str
    metric: Metric
    pairs: tuple[tuple[str, str], ...]
    reversals: tuple[tuple[str, str], ...] = ()


def paper_claims(rho_sweep: Sequence[tuple[float, str]]) -> list[Claim]:
    """The paper's claims (Tables 2 and 11, Fig. 4) over the grid's variant names; `rho_sweep` is (rho, variant)
    pairs (the rho claim needs two of them)."""
    claims = [
        Claim("dynamic_vs_data_free", "Dynamic iterative distillation beats data-free training at an equal "
              "iteration budget", "CIFAR-10 FID 9.56 vs 12.06 (Table 2); same architecture 6.85 vs 9.64 (Table 11)",
              "fd", (("dynamic", "data_free"),)),
        Claim("variant_order", "Dynamic ≥ shuffled ≥ iterative distillation",
              "Fig. 4a (curves only): dynamic converges faster and ends lowest", "fd",
              (("dynamic", "shuffled"), ("shuffled", "iterative"))),
    ]
    ordered = sorted(rho_sweep)
    if len(ordered) >= 2:
        smallest, largest = ordered[0][1], ordered[-1][1]
        # Any larger rho significantly worse than a smaller one contradicts "larger helps".
        reversals = tuple((ordered[j][1], ordered[i][1])
                          for i in range(len(ordered)) for j in range(i + 1, len(ordered))
                          if (ordered[j][1], ordered[i][1]) != (largest, smallest))
        claims.append(Claim("rho", f"Larger rho helps up to {ordered[-1][0]:g}",
                            "Fig. 4b (curves only): gains flatten as rho grows; rho 0.4 used throughout", "fd",
                            ((largest, smallest),), reversals))
    claims += [
        Claim("fd_teacher_approaches", "The student's FD' approaches the teacher's (closer than data-free training)",
              "Table 11: FID' teacher 2.09, DKDM 2.60, data-free 4.13", "fd_teacher", (("dynamic", "data_free"),)),
        Claim("data_based_upper", "Data-based training is the upper reference",
              "Table 2: data-based FID 7.84 vs DKDM 9.56 (CIFAR-10)", "fd", (("data_based", "dynamic"),)),
    ]
    return claims


def architecture_claim(dkdm: str, data_free: str) -> Claim:
    """The paper's title claim (Table 5): DKDM distils into another architecture (a DiT student of the UNet teacher)
    better than data-free training of the same student at the same budget."""
    return Claim("any_architecture", "Any architecture: a DiT student from the UNet teacher, DKDM beats data-free "
                 "training", "Table 5: cross-architecture students (CNN/ViT) distilled from the ADM teacher", "fd",
                 ((dkdm, data_free),))


def pool_claim(paper_pool: str, cheap_pool: str, statement: str) -> Claim:
    """Issue 18 (beyond the paper): is the student of a cheaper pool worse on FD' than the paper pool's? Decided by
    the same rule, "reproduced" reading "is worse" (the paper pool significantly better somewhere)."""
    return Claim(f"pool_{cheap_pool}", statement, "beyond the paper (issue 18): the paper prepares every state by "
                 "the full ancestral chain", "fd_teacher", ((paper_pool, cheap_pool),))
