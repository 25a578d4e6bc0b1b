"""Dataset sources; importing this package registers every dataset."""

from . import cifar, fashion_mnist, higgs, image_folders, synthetic  # noqa: F401
