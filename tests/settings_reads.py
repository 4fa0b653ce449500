"""Which settings a command reads, recorded at the settings objects themselves (not per stage).

`recording(monkeypatch)` wraps `dkdm.settings.load_settings`: every Settings it returns has its tree of pydantic
objects indexed by dotted path ("distill.train", "distill.runs.dynamic", ...). While recording, pydantic's
attribute access and `model_dump`/`model_copy` on those objects are intercepted:

- a field whose value is not a settings object (a number, a string, a path, None) is a leaf read: its path;
- `model_dump` of a settings object reads the whole subtree: the object's path;
- navigating (`settings.distill`, `runs[name]`) reads nothing by itself;
- `model_copy` registers the copy under the original's path, so reads through the copy still count.

Loading and validating the profile happen before recording starts: validators look at every section, and that is
not what a stage depends on. The Settings root's own `model_dump` (`for_log`, the record MLflow keeps of a run) is
not a dependency of any output and is not recorded.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel


class Recorder:
    def __init__(self) -> None:
        self.paths: dict[int, str] = {}
        self.keep: list[Any] = []  # keeps indexed objects alive so their ids stay theirs
        self.reads: set[str] = set()
        self.active = False

    def index(self, obj: Any, path: str) -> None:
        """Register every settings object under `obj` by path (models, and models inside dicts and lists)."""
        if isinstance(obj, BaseModel):
            self.paths[id(obj)] = path
            self.keep.append(obj)
            for name in type(obj).model_fields:
                self.index(obj.__dict__.get(name), _join(path, name))
        elif isinstance(obj, dict):
            for key, value in obj.items():
                self.index(value, _join(path, str(key)))
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                self.index(value, _join(path, str(i)))

    def path_of(self, obj: Any) -> str | None:
        return self.paths.get(id(obj)) if self.active else None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _holds_settings(value: Any, recorder: Recorder) -> bool:
    if isinstance(value, BaseModel):
        return id(value) in recorder.paths
    if isinstance(value, dict):
        return any(_holds_settings(v, recorder) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_settings(v, recorder) for v in value)
    return False


@contextlib.contextmanager
def recording(monkeypatch: Any) -> Iterator[Recorder]:
    """Record the settings every command run inside the block reads (see the module docstring)."""
    import dkdm.settings

    recorder = Recorder()
    real_load = dkdm.settings.load_settings
    real_dump, real_copy = BaseModel.model_dump, BaseModel.model_copy

    def load_settings(*args: Any, **kwargs: Any) -> Any:
        recorder.active = False
        settings = real_load(*args, **kwargs)
        recorder.index(settings, "")
        recorder.active = True
        return settings

    def getattribute(self: Any, name: str) -> Any:
        value = object.__getattribute__(self, name)
        path = recorder.path_of(self)
        if path is not None and name in type(self).model_fields and not _holds_settings(value, recorder):
            recorder.reads.add(_join(path, name))
        return value

    def model_dump(self: Any, *args: Any, **kwargs: Any) -> Any:
        path = recorder.path_of(self)
        if path:  # "" is the root: for_log, MLflow's record of the run
            recorder.reads.add(path)
        return real_dump(self, *args, **kwargs)

    def model_copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        copy = real_copy(self, *args, **kwargs)
        path = recorder.path_of(self)
        if path is not None:
            recorder.index(copy, path)
        return copy

    monkeypatch.setattr(dkdm.settings, "load_settings", load_settings)
    monkeypatch.setattr(BaseModel, "__getattribute__", getattribute, raising=False)
    monkeypatch.setattr(BaseModel, "model_dump", model_dump)
    monkeypatch.setattr(BaseModel, "model_copy", model_copy)
    try:
        yield recorder
    finally:
        recorder.active = False
