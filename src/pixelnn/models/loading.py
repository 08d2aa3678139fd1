"""Loading a trained stage-1 model folder for inference, without the training machinery.

>>> model, config = load_model_dir("models/handbags", device="cpu")  # doctest: +SKIP

This module imports only the model, config, io and error modules (no training loop, torchvision
or evaluation code), so inference (the pipeline, the web app) stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pixelnn.config import MODEL_FILES
from pixelnn.devices import resolve_device
from pixelnn.io import read_folder_config
from pixelnn.models.regressor import Regressor

#: ``config.json``'s ``format`` and ``version`` in a model folder written by ``pixelnn train``.
MODEL_FORMAT = "pixelnn-model"
MODEL_VERSION = 1


def load_model_dir(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Regressor, dict[str, Any]]:
    """Load a trained regressor and its ``config.json`` from MODEL_DIR.

    Parameters
    ----------
    model_dir : path
        A folder written by ``pixelnn train`` (``regressor.safetensors`` and ``config.json``).
    device : str or torch.device
        Where the regressor goes: ``"cpu"`` (default), ``"auto"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``
        (see :func:`pixelnn.devices.resolve_device`; an unavailable device is a PixelNNError).

    Returns
    -------
    model : Regressor
        In eval mode, on ``device``.
    config : dict
        The folder's ``config.json`` (task, regressor, training settings, dataset).
    """
    model_dir = Path(model_dir)
    target = resolve_device(device)
    config = read_folder_config(model_dir, MODEL_FILES.config, "PixelNN model",
                                f"train one with `pixelnn train DATA_DIR --out {model_dir}`")
    return Regressor.load(model_dir / MODEL_FILES.weights).to(target), config
