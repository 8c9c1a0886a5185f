"""The PyTorch tabular family: trains ``models/tabular_mlp.py`` with early stopping.

Device by configuration (``Settings.torch_device``): ``auto`` uses CUDA when present,
``cuda`` insists on it, ``cpu`` forces the CPU. On the CPU training is deterministic
(seeded, deterministic algorithms, fixed thread count): same data + seed → same weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flywheel.core.config import PROJECT_ROOT, Settings
from flywheel.training.families.base import Family, FitData

MODULE_FILE = PROJECT_ROOT / "models" / "tabular_mlp.py"
MODULE_NAME = "tabular_mlp"  # the name pickled with the model; MLflow's code_paths provides it
CATEGORICAL = ("merchant_category_code", "device_code")
DEFAULTS: dict[str, Any] = {"hidden": [64, 32], "dropout": 0.1, "embedding_dim": 4, "lr": 3e-3,
                            "weight_decay": 1e-4, "epochs": 15, "batch_size": 512, "patience": 4,
                            "pos_weight": 3.0}
THREADS = 2


class TorchDeviceError(RuntimeError):
    """The configuration asks for a device this machine does not have."""


def module() -> ModuleType:
    """``models/tabular_mlp.py``, imported under the name its pickles refer to."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, MODULE_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the PyTorch model module {MODULE_FILE}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


def device(setting: str) -> str:
    """Resolve ``auto``/``cpu``/``cuda`` against what this machine has."""
    import torch

    if setting == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise TorchDeviceError("torch_device=cuda but no CUDA device is available "
                               "(set FLYWHEEL_TORCH_DEVICE=auto or cpu)")
    return "cpu"


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic torch with a fixed thread count; restores the previous settings."""
    import torch

    threads, algorithms = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(algorithms)


def _scaling(x: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    center = x.median().fillna(0.0).to_numpy(dtype="float64")
    spread = x.std().fillna(1.0).to_numpy(dtype="float64")
    return center, np.where(spread > 1e-6, spread, 1.0)


class TorchMLPFamily(Family):
    name: ClassVar[str] = "torch_mlp"
    requirements = ("torch",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        import torch
        from sklearn.metrics import average_precision_score

        p = DEFAULTS | params
        if "width" in p:  # searchable shorthand: two layers, the second half as wide
            p["hidden"] = [int(p["width"]), max(8, int(p["width"]) // 2)]
        categorical = [c for c in CATEGORICAL if c in data.x_train.columns]
        numeric = [c for c in data.x_train.columns if c not in categorical]
        sizes = {c: int(max(data.x_train[c].max(), 0)) + 1 for c in categorical}
        center, scale = _scaling(data.x_train[numeric])
        where = device(settings.torch_device)
        with deterministic(seed):
            model = module().TabularMLP(numeric, sizes, center=center, scale=scale, hidden=p["hidden"],
                                        dropout=p["dropout"], embedding_dim=p["embedding_dim"]).to(where)
            x_num, x_cat = model.tensors(data.x_train)
            y = torch.as_tensor(data.y_train.to_numpy(dtype="float32"), device=where)
            loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(p["pos_weight"]), device=where))
            optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
            shuffle = torch.Generator().manual_seed(seed)
            best, best_state, stale = -1.0, None, 0
            for _epoch in range(int(p["epochs"])):
                model.train()
                for idx in torch.randperm(len(y), generator=shuffle).split(int(p["batch_size"])):
                    idx = idx.to(where)
                    optimizer.zero_grad()
                    loss_fn(model(x_num[idx], x_cat[idx]), y[idx]).backward()
                    optimizer.step()
                score = average_precision_score(data.y_val, model.predict_proba(data.x_val))
                if score > best:
                    best, stale = score, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    stale += 1
                    if stale >= int(p["patience"]):
                        break
            if best_state is not None:
                model.load_state_dict(best_state)
        return model.eval()

    def predict_proba(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict_proba(x), dtype="float64")

    def log_model(self, model: Any, *, registered_model_name: str, example: pd.DataFrame) -> Any:
        import mlflow.pytorch
        from mlflow.models import infer_signature

        cpu = model.to("cpu")  # saved on the CPU: loads anywhere, moved to the GPU at load time
        signature = infer_signature(example, self.predict_proba(cpu, example))
        return mlflow.pytorch.log_model(cpu, name="model", registered_model_name=registered_model_name,
                                        code_paths=[str(MODULE_FILE)], signature=signature,
                                        serialization_format="pickle",
                                        pip_requirements=self.pip_requirements())

    def load(self, uri: str, settings: Settings) -> Any:
        import mlflow.pytorch

        if MODULE_FILE.is_file():  # else the copy MLflow logged with the model (code_paths) is used
            module()
        return mlflow.pytorch.load_model(uri, map_location=device(settings.torch_device)).eval()

    @staticmethod
    def state_bytes(model: Any) -> bytes:
        """The weights as bytes (determinism checks)."""
        return b"".join(v.detach().cpu().numpy().tobytes() for v in model.state_dict().values())

