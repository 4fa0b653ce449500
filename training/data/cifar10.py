"""CIFAR-10 from the official archives, already extracted: `cifar-10-batches-py` or `cifar-10-batches-bin`.

Nothing is downloaded. The python version's batches are pickles of plain dicts holding numpy arrays
and lists; they are read with an unpickler that admits only numpy's array reconstruction, so a
tampered file cannot run code.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from training.data.dataset import ImageDataset, require_dir, require_file

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
RECORD_BYTES = 1 + 3 * 32 * 32  # the binary version: label byte, then the 32×32 R, G, B planes

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(text, "latin1"): a pure function.
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Plain containers load as usual (they need no globals); any class other than numpy's is refused."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            # numpy 2 moved the module to numpy._core; pickles written by either name must load.
            try:
                from numpy._core import multiarray
            except ImportError:  # numpy < 2
                from numpy.core import multiarray
            return getattr(multiarray, name)
        if module == "_codecs":
            import _codecs

            return _codecs.encode
        return getattr(np, name)


def read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One `cifar-10-batches-py` file → (uint8 N×32×32×3, int64 labels)."""
    require_file(path, "CIFAR-10 batch")
    try:
        record = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (a {type(record).__name__}, not a dict)")
    record = {k.decode() if isinstance(k, bytes) else k: v for k, v in record.items()}
    if "data" not in record or "labels" not in record:
        raise ValueError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' (keys: {sorted(record)})")
    data = np.asarray(record["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' should be uint8 N×3072, got {data.dtype} {data.shape}")
    labels = np.asarray(record["labels"], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    return _chw_rows_to_nhwc(data), labels


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One `cifar-10-batches-bin` file → (uint8 N×32×32×3, int64 labels)."""
    require_file(path, "CIFAR-10 batch")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records"
        )
    rows = raw.reshape(-1, RECORD_BYTES)
    labels = rows[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {int(labels.max())} out of range 0..9; not a CIFAR-10 batch")
    return _chw_rows_to_nhwc(rows[:, 1:]), labels


def _chw_rows_to_nhwc(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def find_cifar10_dir(root: Path) -> tuple[Path, str]:
    """`root` may be the extracted batches folder itself or the folder that holds it."""
    root = require_dir(Path(root), "CIFAR-10 root")
    for candidate in (root, root / "cifar-10-batches-py", root / "cifar-10-batches-bin"):
        if (candidate / "data_batch_1").is_file() or (candidate / "test_batch").is_file():
            return candidate, "python"
        if (candidate / "data_batch_1.bin").is_file() or (candidate / "test_batch.bin").is_file():
            return candidate, "binary"
    raise FileNotFoundError(
        f"no CIFAR-10 batches under {root}: expected cifar-10-batches-py/ (data_batch_1..5, test_batch) "
        "or cifar-10-batches-bin/ (data_batch_1.bin..) extracted from the official archive"
    )


def load_cifar10(root: Path | str, split: str = "train") -> ImageDataset:
    if split not in ("train", "test"):
        raise ValueError(f"cifar10: unknown split {split!r}; expected 'train' or 'test'")
    folder, kind = find_cifar10_dir(Path(root))
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    suffix, reader = ("", read_python_batch) if kind == "python" else (".bin", read_binary_batch)
    missing = [n + suffix for n in names if not (folder / (n + suffix)).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 {split} split incomplete in {folder}: missing {', '.join(missing)}")
    parts = [reader(folder / (n + suffix)) for n in names]
    return ImageDataset(
        name="cifar10",
        images=np.concatenate([p[0] for p in parts]),
        labels=np.concatenate([p[1] for p in parts]),
        source=str(folder),
        meta={"split": split, "format": kind},
    )
