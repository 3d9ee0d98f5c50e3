"""Digits classifier: scikit-learn's 8x8 handwritten digits, served through the ModelArts contract.

Input (POST /):
* JSON `{"images": [[64 numbers 0-16], ...]}` — `"data"` works as the key too, and each image
  may be a flat list of 64 pixels or an 8x8 nested list; a bare image (64 list or 8x8) is one
  image. Pixels follow the data set: 0 = background, 16 = ink.
* multipart field `images` with one or more image files (PNG, JPEG, ... any size and mode).
  A file is turned grey, shrunk to 8x8 by area averaging, inverted when its border is lighter
  than its middle (dark ink on light paper; the data set is light ink on dark), and its
  contrast stretched to 0-16.

Output: `{"predicted_label": "3", "scores": [["0", p0], ..., ["9", p9]], "model_version": v}`;
several images give `{"predictions": [<one such object without model_version>, ...],
"model_version": v}`.
"""

import json
import os
import pickle
from typing import Any

import numpy as np

from model_service.python_model_service import XgSklServingBaseService


class DigitsService(XgSklServingBaseService):
    def __init__(self, model_path: str) -> None:
        super().__init__(model_path)
        with open(os.path.join(model_path, "model.pkl"), "rb") as f:
            self.model = pickle.load(f)
        with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
            self.version = json.load(f).get("model_version", "unknown")
        self.labels = [str(c) for c in self.model.classes_]

    def _preprocess(self, data: Any) -> np.ndarray:
        if isinstance(data, dict) and isinstance(data.get("images"), dict):
            return np.stack([_image_to_pixels(f) for f in data["images"].values()])
        if isinstance(data, dict):
            if "images" not in data and "data" not in data:
                raise ValueError('send {"images": [[64 pixels], ...]} or a multipart file field "images"')
            data = data.get("images", data.get("data"))
        return _pixels(data)

    def _inference(self, data: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(data)

    def _postprocess(self, data: np.ndarray) -> dict[str, Any]:
        predictions = [
            {
                "predicted_label": self.labels[int(np.argmax(row))],
                "scores": [[label, round(float(p), 6)] for label, p in zip(self.labels, row, strict=True)],
            }
            for row in data
        ]
        if len(predictions) == 1:
            return {**predictions[0], "model_version": self.version}
        return {"predictions": predictions, "model_version": self.version}


def _pixels(value: Any) -> np.ndarray:
    """JSON images -> an (n, 64) array; accepts one image or a list, each flat (64) or 8x8."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError("images must be numbers: 64 per image, flat or as 8 rows of 8") from None
    if arr.shape in ((64,), (8, 8)):
        arr = arr.reshape(1, 64)
    elif arr.ndim == 3 and arr.shape[1:] == (8, 8):
        arr = arr.reshape(len(arr), 64)
    if arr.ndim != 2 or arr.shape[1] != 64 or len(arr) == 0:
        raise ValueError(f"each image needs 64 pixels (flat or 8x8); got an array of shape {arr.shape}")
    return arr


def _image_to_pixels(file: Any) -> np.ndarray:
    from PIL import Image  # only uploads need Pillow

    with Image.open(file) as img:
        grey = np.asarray(img.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=float)
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    if border.mean() > grey[2:6, 2:6].mean():
        grey = 255.0 - grey
    grey -= grey.min()
    if grey.max() > 0:
        grey *= 16.0 / grey.max()
    return grey.reshape(64)
