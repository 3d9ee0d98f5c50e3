"""Build the digits example: two classifiers trained on scikit-learn's bundled digits, as two packages.

`python examples/digits/build.py [DEST]` (default `examples/digits/build`) writes
`DEST/digits-1.0.0/model/` (logistic regression) and `DEST/digits-2.0.0/model/` (random
forest), each with `config.json` (version and held-out accuracy filled in),
`customize_service.py` and `model.pkl`. No download; a few seconds.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "model"


def _estimators() -> dict[str, Any]:
    return {
        "1.0.0": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "2.0.0": RandomForestClassifier(n_estimators=200, random_state=0),
    }


def build(dest: Path) -> dict[str, Path]:
    """Train both versions and write their packages under `dest`; returns {version: package dir}."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    template = json.loads((TEMPLATE / "config.json").read_text(encoding="utf-8"))
    packages = {}
    for version, estimator in _estimators().items():
        estimator.fit(x_train, y_train)
        package = Path(dest) / f"digits-{version}"
        model_dir = package / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        config = {
            **template,
            "model_version": version,
            "metrics": {"accuracy": estimator.score(x_test, y_test)},
        }
        (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(TEMPLATE / "customize_service.py", model_dir / "customize_service.py")
        with open(model_dir / "model.pkl", "wb") as f:
            pickle.dump(estimator, f)
        packages[version] = package
    return packages


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "build"
    for version, path in build(out).items():
        accuracy = json.loads((path / "model" / "config.json").read_text())["metrics"]["accuracy"]
        print(f"digits {version}: {path}  (held-out accuracy {accuracy:.3f})")
