"""Datasets as uint8 NHWC numpy arrays, and the one conversion to the models' [-1, 1] NCHW range."""
from training.data.celeba import load_celeba64
from training.data.cifar10 import load_cifar10
from training.data.dataset import ImageDataset, check_images_uint8, from_model_range, to_model_range
from training.data.digits import load_digits
from training.data.folders import load_image_folder, load_npz
from training.data.imagenet32 import load_imagenet32
from training.data.registry import DATASET_NAMES, load_dataset

__all__ = [
    "DATASET_NAMES",
    "ImageDataset",
    "check_images_uint8",
    "from_model_range",
    "load_celeba64",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_imagenet32",
    "load_npz",
    "to_model_range",
]
