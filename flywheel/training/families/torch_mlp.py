"""The PyTorch tabular family: trains ``models/tabular_mlp.py`` with early stopping.

Device by configuration (``Settings.torch_device``): ``auto`` uses CUDA when present,
``cuda`` insists on it, ``cpu`` forces the CPU. On the CPU training is deterministic
(seeded, deterministic algorithms, fixed thread count): same data + seed → same weights.

With ``compute.engine = dask`` the model trains data-parallel: one rank per Dask worker (torch
DDP on gloo, CPU), each on every ``world``-th training row, gradients averaged by DDP after every
step. Every rank takes the same number of steps per epoch as the single process (batches of about
``batch_size / world`` rows), scores the whole validation split and so stops at the same epoch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flywheel.core.config import PROJECT_ROOT, Settings
from flywheel.training import hyperparameters
from flywheel.training.families.base import ALL_TASKS, Family, FitData

MODULE_FILE = PROJECT_ROOT / "models" / "tabular_mlp.py"
MODULE_NAME = "tabular_mlp"  # the name pickled with the model; MLflow's code_paths provides it
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
def deterministic(seed: int, *, threads: int = THREADS) -> Iterator[None]:
    """Seeded, deterministic torch with a fixed thread count; restores the previous settings."""
    import torch

    previous, algorithms = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(algorithms)


def _scaling(x: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    center = x.median().fillna(0.0).to_numpy(dtype="float64")
    spread = x.std().fillna(1.0).to_numpy(dtype="float64")
    return center, np.where(spread > 1e-6, spread, 1.0)


def _targets(data: FitData, where: str, scaling: tuple[float, float] | None = None) -> tuple[Any, Any, float, float]:
    """Train/validation targets as tensors (regression: standardized) and the target scaling
    (``scaling``: given, e.g. the whole training split's when ``data`` holds one rank's rows)."""
    import torch

    if data.task == "multiclass":
        return (torch.as_tensor(data.y_train.to_numpy(dtype="int64"), device=where),
                torch.as_tensor(data.y_val.to_numpy(dtype="int64"), device=where), 0.0, 1.0)
    center, scale = 0.0, 1.0
    if scaling is not None:
        center, scale = scaling
    elif data.task == "regression":
        center = float(data.y_train.mean())
        scale = float(data.y_train.std()) if float(data.y_train.std() or 0.0) > 1e-12 else 1.0
    y_train = (data.y_train.to_numpy(dtype="float64") - center) / scale
    y_val = (data.y_val.to_numpy(dtype="float64") - center) / scale
    return (torch.as_tensor(y_train, dtype=torch.float32, device=where),
            torch.as_tensor(y_val, dtype=torch.float32, device=where), center, scale)


def _loss(task: str, p: dict[str, Any], where: str) -> Any:
    """BCE (binary, positives weighted by ``pos_weight``), cross-entropy (multiclass), MSE (regression)."""
    import torch

    if task == "multiclass":
        return torch.nn.CrossEntropyLoss()
    if task == "regression":
        return torch.nn.MSELoss()
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(p["pos_weight"]), device=where))


def _epochs(model: Any, data: FitData, p: dict[str, Any], *, where: str, seed: int,
            scaling: tuple[float, float] | None = None, steps: int | None = None) -> dict[str, list[float]]:
    """Mini-batch AdamW with early stopping on the validation metric; leaves the best weights in
    ``model`` and returns the curve: train/validation loss and validation metric per epoch.

    Inside a torch process group (a data-parallel rank) the model is wrapped in DDP and each epoch
    is cut into ``steps`` batches of this rank's rows, the same count on every rank."""
    import torch
    import torch.distributed as dist

    from flywheel.training import evaluation

    metric = data.validation_metric
    sign = -1.0 if evaluation.lower_is_better(metric) else 1.0
    ranked = dist.is_available() and dist.is_initialized()
    net = torch.nn.parallel.DistributedDataParallel(model) if ranked else model
    y, y_val, _, _ = _targets(data, where, scaling)
    x_num, x_cat = model.tensors(data.x_train)
    xv_num, xv_cat = model.tensors(data.x_val)
    loss_fn = _loss(data.task, p, where)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    shuffle = torch.Generator().manual_seed(seed)
    curve: dict[str, list[float]] = {"train_loss": [], "val_loss": [], f"val_{metric}": []}
    best, best_state, stale = -np.inf, None, 0
    for _epoch in range(int(p["epochs"])):
        model.train()
        total, seen = 0.0, float(len(y))
        order = torch.randperm(len(y), generator=shuffle)
        for idx in order.tensor_split(int(steps or 1)) if ranked else order.split(int(p["batch_size"])):
            idx = idx.to(where)
            optimizer.zero_grad()
            loss = loss_fn(net(x_num[idx], x_cat[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        if ranked:  # the curve's train loss over every rank's rows
            sums = torch.tensor([total, seen], dtype=torch.float64)
            dist.all_reduce(sums)
            total, seen = float(sums[0]), float(sums[1])
        model.eval()
        with torch.no_grad():
            raw = model(xv_num, xv_cat)
            curve["val_loss"].append(float(loss_fn(raw, y_val)))
            score = evaluation.score(metric, data.y_val.to_numpy(), model.output(raw).float().cpu().numpy())
        curve["train_loss"].append(total / max(seen, 1.0))
        curve[f"val_{metric}"].append(score)
        if sign * score > best:
            best, stale = sign * score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= int(p["patience"]):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return curve


class TorchMLPFamily(Family):
    name: ClassVar[str] = "torch_mlp"
    tasks: ClassVar[frozenset[str]] = ALL_TASKS
    requirements = ("torch",)
    parameters: ClassVar[frozenset[str]] = hyperparameters.TORCH_MLP
    overfit_params: ClassVar[dict[str, Any]] = {"epochs": 40, "batch_size": 64, "patience": 40, "dropout": 0.0,
                                                "weight_decay": 0.0, "lr": 3e-2, "pos_weight": 1.0}

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        plan = _plan(data, params, seed)
        if settings.compute.distributed:
            return _fit_data_parallel(plan, data, settings)
        where = device(settings.torch_device)
        with deterministic(seed):
            model = _build(plan, where)
            model.history = _epochs(model, data, plan.p, where=where, seed=seed, scaling=plan.target)
        return model.eval()

    def predict(self, model: Any, x: pd.DataFrame, *, task: str) -> np.ndarray:
        return np.asarray(model.predict(x), dtype="float64")

    def curves(self, model: Any) -> dict[str, list[float]]:
        return dict(getattr(model, "history", {}))

    def log_model(self, model: Any, *, registered_model_name: str, example: pd.DataFrame) -> Any:
        import mlflow.pytorch
        from mlflow.models import infer_signature

        cpu = model.to("cpu")  # saved on the CPU: loads anywhere, moved to the GPU at load time
        signature = infer_signature(example, np.asarray(cpu.predict(example)))
        return mlflow.pytorch.log_model(cpu, name="model", registered_model_name=registered_model_name,
                                        code_paths=[str(MODULE_FILE)], signature=signature,
                                        serialization_format="pickle",
                                        pip_requirements=self.pip_requirements())

    def load(self, uri: str, settings: Settings) -> Any:
        import mlflow.pytorch

        if MODULE_FILE.is_file():  # else the copy MLflow logged with the model (code_paths) is used
            module()
        return mlflow.pytorch.load_model(uri, map_location=device(settings.torch_device)).eval()

    def export_onnx(self, model: Any, features: list[str], *, task: str) -> bytes:
        # The legacy TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, and a
        # traced MLP is all there is to export. The graph takes the model matrix and does what
        # ``TabularMLP.tensors`` does in numpy (numeric columns; codes + 1, unknown -> 0) first.
        import tempfile
        from pathlib import Path

        import torch

        graph = _MatrixInput(model.to("cpu").eval(), features)
        example = torch.zeros((2, len(features)), dtype=torch.float32)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(graph, (example,), str(path), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "rows"}, "output": {0: "rows"}}, opset_version=17,
                              dynamo=False)
            return path.read_bytes()

    @staticmethod
    def state_bytes(model: Any) -> bytes:
        """The weights as bytes (determinism checks)."""
        return b"".join(v.detach().cpu().numpy().tobytes() for v in model.state_dict().values())



def _matrix_input_class() -> type:
    import torch

    class MatrixInput(torch.nn.Module):
        """``TabularMLP`` scoring a float32 model matrix (columns = ``features``): the export graph."""

        numeric: torch.Tensor  # buffers: positions of the numeric and code columns, vocabulary sizes
        codes: torch.Tensor
        sizes: torch.Tensor

        def __init__(self, mlp: Any, features: list[str]) -> None:
            super().__init__()
            index = {f: i for i, f in enumerate(features)}
            self.mlp = mlp
            self.register_buffer("numeric", torch.tensor([index[c] for c in mlp.numeric], dtype=torch.long))
            self.register_buffer("codes", torch.tensor([index[c] for c in mlp.categorical], dtype=torch.long))
            self.register_buffer("sizes", torch.tensor(list(mlp.categorical.values()), dtype=torch.long))

        def forward(self, x: Any) -> Any:
            raw = torch.index_select(x, 1, self.codes)
            codes = torch.where(torch.isnan(raw), torch.full_like(raw, -1.0), raw).to(torch.long) + 1
            codes = torch.where((codes < 1) | (codes > self.sizes), torch.zeros_like(codes), codes)
            return self.mlp.output(self.mlp(torch.index_select(x, 1, self.numeric), codes))

    return MatrixInput


def _MatrixInput(mlp: Any, features: list[str]) -> Any:  # noqa: N802 (a class built on first use)
    return _matrix_input_class()(mlp, features)


@dataclass(frozen=True)
class _Plan:
    """What every rank builds the same model from: parameters, columns, scalings, the seed."""

    p: dict[str, Any]
    numeric: list[str]
    categorical: dict[str, int]
    center: np.ndarray
    scale: np.ndarray
    target: tuple[float, float]
    task: str
    outputs: int
    seed: int
    train_rows: int


def _plan(data: FitData, params: dict[str, Any], seed: int) -> _Plan:
    p = DEFAULTS | params
    if "width" in p:  # searchable shorthand: two layers, the second half as wide
        p["hidden"] = [int(p["width"]), max(8, int(p["width"]) // 2)]
    # Category codes (Featurizer.categorical: feature -> number of known codes) get embeddings.
    categorical = {c: int(n) for c, n in data.categorical.items() if c in data.x_train.columns}
    numeric = [c for c in data.x_train.columns if c not in categorical]
    center, scale = _scaling(data.x_train[numeric])
    _, _, target_center, target_scale = _targets(data, "cpu")
    return _Plan(p, numeric, categorical, center, scale, (target_center, target_scale), data.task,
                 data.n_classes if data.task == "multiclass" else 1, seed, len(data.x_train))


def _build(plan: _Plan, where: str) -> Any:
    p = plan.p
    return module().TabularMLP(
        plan.numeric, plan.categorical, center=plan.center, scale=plan.scale, hidden=p["hidden"],
        dropout=p["dropout"], embedding_dim=p["embedding_dim"], task=plan.task, outputs=plan.outputs,
        target_center=plan.target[0], target_scale=plan.target[1]).to(where)


def _fit_data_parallel(plan: _Plan, data: FitData, settings: Settings) -> Any:
    """Train on the Dask cluster, one DDP rank per worker; returns rank 0's model (on this host's device)."""
    from flywheel.compute import cluster

    dask = cluster.client(settings)
    world = settings.compute.torch_ranks or len(cluster.workers(dask))
    # Strided shards: each rank's rows span the whole training period.
    shards = [FitData(data.x_train.iloc[r::world], data.y_train.iloc[r::world], data.x_val, data.y_val,
                      task=data.task, n_classes=data.n_classes, categorical=data.categorical,
                      metric=data.metric) for r in range(world)]
    if min(len(s.x_train) for s in shards) == 0:
        raise ValueError(f"{world} data-parallel ranks for {len(data.x_train)} training rows: too few rows")
    results = cluster.run_ranks(dask, _rank, [(plan, shard) for shard in shards])
    state, history = results[0]
    with deterministic(plan.seed):
        model = _build(plan, "cpu")
    model.load_state_dict(state)
    model.history = history
    return model.to(device(settings.torch_device)).eval()


RENDEZVOUS_TIMEOUT = timedelta(minutes=5)


def _rank(rank: int, world: int, host: str, port: int, payload: tuple[_Plan, FitData]) -> tuple[Any, Any]:
    """One data-parallel rank, run on a Dask worker: join the gloo process group, train, leave it.
    Returns (weights, curve) from rank 0 and (None, None) from the others."""
    import torch.distributed as dist
    from distributed import get_worker

    plan, shard = payload
    threads = max(1, int(get_worker().state.nthreads))  # the worker's share of its host, not more
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=rank, world_size=world,
                            timeout=RENDEZVOUS_TIMEOUT)
    try:
        steps = min(math.ceil(plan.train_rows / int(plan.p["batch_size"])), len(shard.x_train))
        with deterministic(plan.seed, threads=threads):
            model = _build(plan, "cpu")
            curve = _epochs(model, shard, plan.p, where="cpu", seed=plan.seed, scaling=plan.target, steps=steps)
        if rank != 0:
            return None, None
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, curve
    finally:
        dist.destroy_process_group()
