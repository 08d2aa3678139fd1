"""Datasets: turning photo collections into (input, photo) pairs, and reading them back."""

from pixelnn.data.dataset import SPLITS, Dataset, SplitData, assign_split, image_grid, pair_grid, write_dataset

__all__ = ["SPLITS", "Dataset", "PrepareReport", "SplitData", "assign_split", "image_grid", "pair_grid",
           "prepare_dataset", "write_dataset"]


def __getattr__(name):  # lazy: pixelnn.data.prepare imports Pillow and tqdm
    if name in ("prepare_dataset", "PrepareReport"):
        from pixelnn.data import prepare

        return getattr(prepare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
