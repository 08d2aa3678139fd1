"""PixelNN: example-based image synthesis (Bansal, Sheikh, Ramanan).

Stage 1 regresses a smooth image f(x) from an incomplete input x; stage 2 composes many
diverse outputs by copying high frequencies from nearest-neighbour exemplars.
"""

__version__ = "0.1.0"

from pixelnn.errors import PixelNNError  # noqa: E402

__all__ = ["PixelNNError", "__version__"]
