"""Dataset loaders on small fake data written to disk (nothing is downloaded)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    from_model_range,
    load_celeba64,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_imagenet32,
    load_npz,
    to_model_range,
)
from training.data.folders import resize_square


def rng_images(n: int, h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


# --- digits --------------------------------------------------------------------------------------------


def test_digits_are_uint8_8x8_single_channel_scaled_from_0_16():
    from sklearn.datasets import load_digits as sk

    data = load_digits()
    raw = sk().images
    assert data.images.shape == (1797, 8, 8, 1) and data.images.dtype == np.uint8
    assert data.labels.shape == (1797,) and set(data.labels.tolist()) == set(range(10))
    np.testing.assert_array_equal(data.images[..., 0], np.rint(raw * 255 / 16).astype(np.uint8))
    assert data.images.max() == 255 and data.images.min() == 0


def test_digits_train_and_test_splits_are_disjoint_and_cover_the_set():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) == 1437 and len(test) == 360
    all_rows = {row.tobytes() + bytes([lab])
                for row, lab in zip(load_digits().images, load_digits().labels, strict=False)}
    assert len(train) + len(test) == 1797
    split_rows = [row.tobytes() + bytes([lab])
                  for d in (train, test) for row, lab in zip(d.images, d.labels, strict=False)]
    assert set(split_rows) <= all_rows
    with pytest.raises(ValueError, match="unknown split"):
        load_digits("validation")


def test_to_model_range_and_back():
    images = np.array([[[[0], [255]], [[128], [64]]]], dtype=np.uint8)  # 1×2×2×1
    x = to_model_range(images)
    assert x.dtype == torch.float32 and x.shape == (1, 1, 2, 2)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(from_model_range(x), images)
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(images.astype(np.float32))


# --- CIFAR-10 ------------------------------------------------------------------------------------------


def write_cifar_python(folder, n_per_batch=4):
    folder.mkdir(parents=True)
    expected = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = rng_images(n_per_batch, 32, 32, seed=i)
        labels = [(i + j) % 10 for j in range(n_per_batch)]
        rows = images.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072)
        record = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                  b"filenames": [f"{j}.png".encode() for j in range(n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(record, protocol=2))
        expected[name] = (images, np.array(labels))
    return expected


def test_cifar10_python_version(tmp_path):
    expected = write_cifar_python(tmp_path / "cifar-10-batches-py")
    train = load_cifar10(tmp_path)
    assert train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images[:4], expected["data_batch_1"][0])
    np.testing.assert_array_equal(train.labels[16:], expected["data_batch_5"][1])
    test = load_cifar10(tmp_path / "cifar-10-batches-py", "test")
    np.testing.assert_array_equal(test.images, expected["test_batch"][0])


def test_cifar10_binary_version(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    images = rng_images(3, 32, 32, seed=5)
    labels = np.array([7, 0, 9], np.uint8)
    records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(3, 3072)], axis=1)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        records.astype(np.uint8).tofile(folder / name)
    test = load_dataset("cifar10", root=tmp_path, split="test")
    np.testing.assert_array_equal(test.images, images)
    assert test.labels.tolist() == [7, 0, 9]
    assert len(load_cifar10(tmp_path)) == 15


def test_cifar10_binary_with_a_truncated_record_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(b"\x01" * 3000)
    with pytest.raises(ValueError, match="test_batch.bin: 3000 bytes"):
        load_cifar10(tmp_path, "test")


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_pickle_with_code_is_refused(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_cifar10(tmp_path, "test")
    assert "pwned" not in capsys.readouterr().out


def test_cifar10_missing_or_incomplete(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 root not found"):
        load_cifar10(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    write_cifar_python(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        load_cifar10(tmp_path)


# --- folders, npz, CelebA ------------------------------------------------------------------------------


def test_image_folder_resizes_squashes_and_orders(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.fromarray(rng_images(1, 20, 10, seed=1)[0]).save(tmp_path / "imgs" / "b.png")
    Image.fromarray(rng_images(1, 12, 12, seed=2)[0]).save(tmp_path / "imgs" / "sub" / "a.jpg")
    Image.fromarray(rng_images(1, 8, 8, seed=3)[0]).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path / "imgs", 8)
    assert data.images.shape == (3, 8, 8, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images[0], rng_images(1, 8, 8, seed=3)[0])  # a.png, already 8×8
    grey = load_dataset(tmp_path / "imgs", image_size=4)
    assert grey.images.shape == (3, 4, 4, 3)
    assert load_image_folder(tmp_path / "imgs", 8, channels=1).images.shape == (3, 8, 8, 1)


def test_class_subfolders_become_labels(tmp_path):
    for i, cls in enumerate(["dog", "cat", "cat"]):
        (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng_images(1, 8, 8, seed=i)[0]).save(tmp_path / "imgs" / cls / f"{i}.png")
    data = load_image_folder(tmp_path / "imgs", 8)
    np.testing.assert_array_equal(data.labels, [0, 0, 1])  # sorted files: cat/1, cat/2, dog/0; classes sorted
    assert data.meta["classes"] == "cat,dog"
    Image.fromarray(rng_images(1, 8, 8, seed=9)[0]).save(tmp_path / "imgs" / "loose.png")
    assert load_image_folder(tmp_path / "imgs", 8).labels is None  # an image outside the classes: unlabelled


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_image_folder(tmp_path / "absent", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        load_image_folder(tmp_path / "empty", 8)
    (tmp_path / "mixed").mkdir()
    Image.fromarray(rng_images(1, 8, 8)[0]).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(rng_images(1, 9, 9)[0]).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match="pass image_size"):
        load_image_folder(tmp_path / "mixed")
    (tmp_path / "mixed" / "c.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="c.png: cannot be read"):
        load_image_folder(tmp_path / "mixed", 8)


def test_npz_in_adm_format(tmp_path):
    images = rng_images(5, 8, 8)
    np.savez(tmp_path / "ref.npz", arr_0=images)
    np.testing.assert_array_equal(load_npz(tmp_path / "ref.npz").images, images)
    np.testing.assert_array_equal(load_dataset(tmp_path / "ref.npz", limit=2).images, images[:2])
    assert load_npz(tmp_path / "ref.npz", image_size=4).images.shape == (5, 4, 4, 3)


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"images": rng_images(2, 8, 8)}, "no 'arr_0'"),
        ({"arr_0": rng_images(2, 8, 8).astype(np.float32)}, "dtype uint8"),
        ({"arr_0": rng_images(2, 8, 8)[..., 0]}, "shape N×H×W×C"),
        ({"arr_0": np.zeros((0, 8, 8, 3), np.uint8)}, "no images"),
    ],
)
def test_bad_npz_is_refused_with_the_reason(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message) as err:
        load_npz(tmp_path / "bad.npz")
    assert str(tmp_path / "bad.npz") in str(err.value) and "\n" not in str(err.value)


def test_npz_that_is_not_an_archive(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="npz file not found"):
        load_npz(tmp_path / "y.npz")


def test_celeba64_squashes_without_cropping_like_cv2_bilinear(tmp_path):
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    gradient = np.tile(np.linspace(0, 255, 178).astype(np.uint8)[None, :, None], (218, 1, 3))
    for i in range(3):
        Image.fromarray(gradient).save(folder / f"{i:06d}.png")
    data = load_celeba64(tmp_path)
    assert data.images.shape == (3, 64, 64, 3) and data.name == "celeba64"
    # Squashed, not cropped: the full horizontal ramp survives, dark on the left edge, bright on the right.
    assert data.images[0, 32, 0, 0] < 5 and data.images[0, 32, -1, 0] > 250
    assert len(load_dataset("celeba64", root=tmp_path, limit=2)) == 2


def test_bilinear_cv2_matches_the_half_pixel_formula():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 16
    out = resize_square(image, 2, "bilinear-cv2")
    # Halving with half-pixel centres samples between source pixels 0.5 and 2.5: mean of each 2×2 block.
    expected = image.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(2, 2, 4).mean(-1)
    np.testing.assert_allclose(out[..., 0], expected, atol=0.51)


# --- ImageNet-32 ---------------------------------------------------------------------------------------


def test_imagenet32_batches(tmp_path):
    expected = []
    for k in (1, 2, 10):
        images = rng_images(3, 32, 32, seed=k)
        np.savez(tmp_path / f"train_data_batch_{k}.npz", data=images.transpose(0, 3, 1, 2).reshape(3, 3072),
                 labels=[1, 500, 1000], mean=np.zeros(3072))
        expected.append(images)
    data = load_imagenet32(tmp_path)
    np.testing.assert_array_equal(data.images, np.concatenate(expected))  # batch 10 after 2, not after 1
    assert data.labels[:3].tolist() == [0, 499, 999]
    assert len(load_dataset("imagenet32", root=tmp_path, limit=4)) == 4
    with pytest.raises(FileNotFoundError, match="val_data.npz"):
        load_imagenet32(tmp_path, "val")


def test_imagenet32_wrong_shape_is_refused(tmp_path):
    np.savez(tmp_path / "train_data_batch_1.npz", data=np.zeros((2, 100), np.uint8), labels=[1, 2])
    with pytest.raises(ValueError, match="uint8 N×3072"):
        load_imagenet32(tmp_path)


# --- registry ------------------------------------------------------------------------------------------


def test_registry_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="pass root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="native 8"):
        load_dataset("digits", image_size=32)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="neither a folder of images nor an .npz"):
        load_dataset(tmp_path / "x.txt")
    assert load_dataset("digits", split="test").images.shape == (360, 8, 8, 1)


def test_registry_channels(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rng_images(1, 8, 8)[0]).save(tmp_path / "imgs" / "a.png")
    assert load_dataset(tmp_path / "imgs", channels=1).images.shape == (1, 8, 8, 1)
    assert load_dataset("digits", channels=1).channels == 1
    with pytest.raises(ValueError, match="has 1 channels, not 3"):
        load_dataset("digits", channels=3)


def test_non_square_images_are_centre_cropped_then_resized_never_squashed(tmp_path):
    """The README's rule: a 16×12 image keeps its middle 12×12 (rows 2..13), then is resized to the profile size."""
    from training.data.folders import center_crop

    tall = rng_images(3, 16, 12, seed=4)
    np.savez(tmp_path / "tall.npz", arr_0=tall)
    got = load_dataset(tmp_path / "tall.npz", image_size=8)
    expected = np.stack([resize_square(im[2:14], 8, "bicubic") for im in tall])
    np.testing.assert_array_equal(got.images, expected)
    assert not np.array_equal(got.images, np.stack([resize_square(im, 8, "bicubic") for im in tall]))
    assert got.meta["non_square"] == "center-crop"
    assert center_crop(rng_images(1, 5, 8)[0]).shape == (5, 5, 3)
    wide = rng_images(1, 5, 8, seed=5)[0]
    np.testing.assert_array_equal(center_crop(wide), wide[:, 1:6])  # the odd pixel goes to the right
    Image.fromarray(tall[0]).save(tmp_path / "one.png")
    (tmp_path / "folder").mkdir()
    Image.fromarray(tall[0]).save(tmp_path / "folder" / "a.png")
    np.testing.assert_array_equal(load_image_folder(tmp_path / "folder", 8).images[0], expected[0])


def test_dkdm_data_records_the_crop_of_a_non_square_npz(tmp_path, monkeypatch):
    import json

    import yaml
    from typer.testing import CliRunner

    from dkdm import profiles
    from dkdm.cli import app

    for key in [k for k in os.environ if k.startswith("DKDM_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "tall.npz", arr_0=rng_images(40, 16, 12, c=1, seed=6))
    params = yaml.safe_load((profiles.packaged_dir() / "ci.yaml").read_text())
    params["data"].update(dataset="npz", path=str(tmp_path / "tall.npz"), limit=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = CliRunner().invoke(app, ["data"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "outputs" / "data" / "info.json").read_text())
    assert info["meta"]["non_square"] == "center-crop"
    with np.load(tmp_path / "outputs" / "data" / "dataset.npz") as data:
        assert data["arr_0"].shape == (40, 8, 8, 1)
