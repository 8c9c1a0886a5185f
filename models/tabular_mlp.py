"""PyTorch tabular model: an MLP over scaled numeric features and embeddings of categorical codes.

The module is self-contained: imputation values, scaling and the category vocabularies are
buffers and attributes, so a saved module scores raw model-matrix columns anywhere. MLflow
logs this file with the model (``code_paths``), so serving needs nothing else from the repo.
Training lives in ``flywheel.training.families.torch_mlp``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

CLIP = 10.0  # standardized values beyond ±10 are clipped: heavy tails must not dominate


class TabularMLP(nn.Module):
    """``numeric``: float columns (NaN allowed: imputed and flagged); ``categorical``: integer
    code columns and their vocabulary size (codes outside ``[0, size)`` map to "unknown").

    ``task``: ``binary`` (one logit), ``multiclass`` (``outputs`` logits, one per class code) or
    ``regression`` (one value, learnt standardized: ``target_center``/``target_scale``)."""

    def __init__(self, numeric: Sequence[str], categorical: dict[str, int], *, center: np.ndarray,
                 scale: np.ndarray, hidden: Sequence[int] = (64, 32), dropout: float = 0.1,
                 embedding_dim: int = 4, task: str = "binary", outputs: int = 1,
                 target_center: float = 0.0, target_scale: float = 1.0) -> None:
        super().__init__()
        self.numeric = list(numeric)
        self.categorical = dict(categorical)
        self.task = task
        self.target_center, self.target_scale = float(target_center), float(target_scale)
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        # index 0 is "unknown"; code c is stored at c + 1
        self.embeddings = nn.ModuleList(nn.Embedding(size + 1, embedding_dim) for size in self.categorical.values())
        width = 2 * len(self.numeric) + embedding_dim * len(self.categorical)
        layers: list[nn.Module] = []
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(dropout)]
            width = units
        layers.append(nn.Linear(width, outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Binary / regression: one output per row (n,); multiclass: logits (n, k)."""
        missing = torch.isnan(numeric)
        values = torch.where(missing, self.center.expand_as(numeric), numeric)
        values = ((values - self.center) / self.scale).clamp(-CLIP, CLIP)
        parts = [values, missing.float()]
        parts += [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        out = self.mlp(torch.cat(parts, dim=1))
        return out if getattr(self, "task", "binary") == "multiclass" else out.squeeze(1)

    def tensors(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward inputs of a model-matrix DataFrame, on the module's device."""
        device = self.center.device
        numeric = torch.as_tensor(frame[self.numeric].to_numpy(dtype="float32"), device=device)
        codes = frame[list(self.categorical)].fillna(-1).to_numpy(dtype="int64") + 1
        sizes = np.array(list(self.categorical.values()), dtype="int64")
        codes = np.where((codes < 1) | (codes > sizes), 0, codes)
        return numeric, torch.as_tensor(codes, device=device)

    def output(self, raw: torch.Tensor) -> torch.Tensor:
        """What the task returns from the forward output: probability, class probabilities, value."""
        task = getattr(self, "task", "binary")  # modules pickled before task types were binary
        if task == "multiclass":
            return torch.softmax(raw, dim=1)
        if task == "regression":
            return raw * self.target_scale + self.target_center
        return torch.sigmoid(raw)

    @torch.no_grad()
    def predict(self, frame: pd.DataFrame, *, batch_size: int = 65_536) -> np.ndarray:
        """Binary: positive-class probability (n,); multiclass: (n, k); regression: value (n,)."""
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, len(frame), batch_size):
            numeric, codes = self.tensors(frame.iloc[start : start + batch_size])
            out.append(self.output(self(numeric, codes)).float().cpu().numpy())
        self.train(was_training)
        return np.concatenate(out) if out else np.empty(0, dtype="float32")

    def predict_proba(self, frame: pd.DataFrame, *, batch_size: int = 65_536) -> np.ndarray:
        """Class probabilities (binary: of the positive class)."""
        return self.predict(frame, batch_size=batch_size)
