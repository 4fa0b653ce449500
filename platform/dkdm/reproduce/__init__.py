"""Reproduction of the paper's claims at CPU scale (or paper scale): a seeded grid of students, intervals over
seeds and one verdict per claim. `dkdm reproduce --help`; the experiment lives in experiments/reproduce/."""
