"""Readable comparison of two state-dict layouts (key -> shape), grouped by module, for load errors."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

Shapes = Mapping[str, Sequence[int]]

_MAX_GROUPS = 8
_MAX_NAMES = 5


def module_group(key: str) -> str:
    """Block a key belongs to: the first name plus the indices that follow it (`input_blocks.4.1`, `blocks.3`)."""
    parts = key.split(".")
    taken = [parts[0]]
    for part in parts[1:-1]:
        if not part.isdigit():
            break
        taken.append(part)
    return ".".join(taken) if len(parts) > 1 else "(top level)"


def _grouped(keys: list[str], detail: Mapping[str, str] | None = None) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        group = module_group(key)
        name = key if group == "(top level)" else key[len(group) + 1:]
        groups[group].append(f"{name} {detail[key]}" if detail else name)
    lines = []
    for group, names in list(groups.items())[:_MAX_GROUPS]:
        shown = ", ".join(names[:_MAX_NAMES])
        more = f" (+{len(names) - _MAX_NAMES} more)" if len(names) > _MAX_NAMES else ""
        lines.append(f"    {group}: {shown}{more}")
    if len(groups) > _MAX_GROUPS:
        rest = list(groups.values())[_MAX_GROUPS:]
        lines.append(f"    ... and {len(rest)} more groups ({sum(len(n) for n in rest)} keys)")
    return lines


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str | None:
    # A wrapper prefix (e.g. "model.", "module.", "diffusion_model.") on every file key is the most common cause.
    missing_set = set(missing)
    prefixes: Counter[str] = Counter()
    for key in unexpected:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in missing_set:
                prefixes[".".join(parts[:i]) + "."] += 1
                break
    if prefixes:
        prefix, count = prefixes.most_common(1)[0]
        if count >= len(unexpected) // 2:
            return f"  hint: {count} file keys are model keys with the extra prefix {prefix!r}; strip it"
    unexpected_set = set(unexpected)
    stripped: Counter[str] = Counter()
    for key in missing:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in unexpected_set:
                stripped[".".join(parts[:i]) + "."] += 1
                break
    if stripped:
        prefix, count = stripped.most_common(1)[0]
        return f"  hint: {count} file keys lack the prefix {prefix!r} that the model expects"
    return None


def describe_mismatch(expected: Shapes, found: Shapes, *, what: str = "state dict") -> str | None:
    """None when `found` has exactly the keys and shapes of `expected`, else a multi-line grouped report.

    The first line is a one-line summary; the following lines list missing keys (in the model, not in the file),
    unexpected keys (in the file, not in the model) and wrong shapes, grouped by block and truncated.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = {k: f"(file {tuple(found[k])}, model {tuple(expected[k])})"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])}
    if not (missing or unexpected or wrong):
        return None
    counts = ", ".join(f"{n} {label}" for n, label in
                       ((len(missing), "missing"), (len(unexpected), "unexpected"), (len(wrong), "wrong shape"))
                       if n)
    lines = [f"{what} does not match the model: {counts} (model has {len(expected)} keys, file has {len(found)})"]
    if missing:
        lines += [f"  missing keys ({len(missing)}, in the model but not in the file):", *_grouped(missing)]
    if unexpected:
        lines += [f"  unexpected keys ({len(unexpected)}, in the file but not in the model):", *_grouped(unexpected)]
    if wrong:
        lines += [f"  wrong shapes ({len(wrong)}):", *_grouped(list(wrong), wrong)]
    hint = _prefix_hint(missing, unexpected) if missing and unexpected else None
    if hint:
        lines.append(hint)
    return "\n".join(lines)
