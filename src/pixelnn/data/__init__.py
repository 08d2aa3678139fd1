"""Datasets: turning photo collections into (input, photo) pairs, and reading them back."""

from pixelnn.data.dataset import SPLITS, Dataset, SplitData, assign_split, image_grid, pair_grid, write_dataset

__all__ = ["SPLITS", "Dataset", "SplitData", "assign_split", "image_grid", "pair_grid", "write_dataset"]
