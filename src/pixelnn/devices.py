"""Where tensors live: ``--device auto|cpu|cuda[:N]|mps`` for every command.

>>> resolve_device("cpu")
device(type='cpu')

``auto`` picks the first CUDA GPU when one is there, else Apple's MPS when available, else the
CPU. An unavailable device is a one-line :class:`~pixelnn.errors.PixelNNError` naming the valid
choices, never a traceback from deep inside torch.

torch is imported when a device is resolved, not with this module, so the command line can name
:data:`DEVICE_CHOICES` in its help without importing torch.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from pixelnn.errors import PixelNNError

if TYPE_CHECKING:
    import torch

#: The spellings ``--device`` accepts (``cuda:N`` picks GPU N).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DEFAULT_DEVICE = "auto"

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, str]] = set()  # (option, device) already warned about emulated bf16


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device | None = DEFAULT_DEVICE) -> torch.device:
    """A ``torch.device`` from a user's spelling, checked to exist on this machine.

    Parameters
    ----------
    name : str or torch.device or None
        ``"auto"`` (or None), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Returns
    -------
    torch.device
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    name = (name or DEFAULT_DEVICE).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m:
        if not torch.cuda.is_available():
            raise PixelNNError(f"device {name!r} asked for, but this torch sees no CUDA GPU; valid here: "
                               f"{', '.join(available_devices())}")
        index = int(m.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise PixelNNError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA GPU(s); "
                               f"valid here: {', '.join(available_devices())}")
        return torch.device("cuda", index)
    if name == "mps":
        if not _mps_available():
            raise PixelNNError(f"device 'mps' asked for, but MPS is not available; valid here: "
                               f"{', '.join(available_devices())}")
        return torch.device("mps")
    raise PixelNNError(f"invalid device {name!r}; valid: {', '.join(DEVICE_CHOICES)}")


def available_devices() -> list[str]:
    """The device names that :func:`resolve_device` accepts on this machine."""
    import torch

    names = ["auto", "cpu"]
    names += [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    names += ["mps"] if _mps_available() else []
    return names


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 arithmetic natively, so that bf16 autocast speeds training up.

    On the CPU this asks oneDNN (AVX512-BF16 or AMX); without them torch emulates bf16 and autocast is
    slower than fp32. On CUDA it asks :func:`torch.cuda.is_bf16_supported` (Ampere and later). MPS: no.
    """
    import torch

    if device.type == "cpu":
        check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
        try:
            return bool(check()) if check is not None else False
        except (RuntimeError, AttributeError):
            return False
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return False


def resolve_autocast(autocast: str, device: torch.device, option: str = "--autocast") -> str:
    """``"bf16"`` or ``"off"``: what an autocast choice (``auto|off|bf16``) means on ``device``.

    ``"auto"`` is bf16 where :func:`native_bf16`, since emulated bf16 is slower than fp32; an explicit
    ``"bf16"`` where it is emulated is honoured with one warning naming ``option``.
    """
    if autocast == "auto":
        return "bf16" if native_bf16(device) else "off"
    if autocast == "bf16" and not native_bf16(device) and (option, str(device)) not in _WARNED:
        _WARNED.add((option, str(device)))  # once per process: synthesize resolves it for every input
        log.warning("%s bf16: %s has no native bfloat16, so it is emulated and can be many times slower "
                    "than fp32 (measured: 10x on a 2-core AVX2 CPU); %s auto picks the faster", option, device, option)
    return autocast
