"""The GPU variant of the model server (configuration, not a copy): with a PyTorch champion and
``torch_device=cuda`` + ``serving_gpus=1`` it serves on CUDA and agrees with the CPU variant."""

from __future__ import annotations

import re

import httpx
import pytest

from flywheel.stack import launcher as stack
from flywheel.training import promotion
from flywheel.training.packaging import build_bento
from flywheel.training.trainer import train

from .serving_support import END, champion_version, only, txn

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device on this machine: the GPU variant needs one (runs on GPU CI/hosts)"),
]


def _score(settings, tag: str, batch: list[dict]) -> tuple[list[float], str]:
    served = stack.up(settings, services=["model-server"], bento=tag)
    try:
        key = served.api_key.get_secret_value()
        with httpx.Client(base_url=str(served.model_server_url), headers={"X-API-Key": key}, timeout=60) as http:
            resp = http.post("/fraud/predict_batch", json=batch)
            assert resp.status_code == 200, resp.text
            metrics = http.get("/metrics").text
        live = re.findall(r'flywheel_model_info\{[^}]*device="([^"]+)"[^}]*\} 1\.0', metrics)
        return [p["probability"] for p in resp.json()], live[0] if live else "none"
    finally:
        stack.down(served, services=["model-server"])


def test_gpu_variant_serves_on_cuda_and_agrees_with_cpu(services, loaded, spec):
    before = champion_version(spec, services)
    mlp = train(only(spec, "torch_mlp", epochs=3), end=END, reason="gpu serving test", settings=services)
    promotion.promote(spec.model_name, mlp.version, reason="gpu serving test", actor="test", settings=services)
    try:
        tag = build_bento(spec, version=mlp.version, settings=services)
        batch = [txn(transaction_id=f"g-{i}", user_id=i, amount=5.0 + 37 * i) for i in range(200)]
        cpu, cpu_device = _score(services.model_copy(update={"torch_device": "cpu", "serving_gpus": 0}), tag, batch)
        gpu, gpu_device = _score(services.model_copy(update={"torch_device": "cuda", "serving_gpus": 1}), tag, batch)
    finally:
        promotion.promote(spec.model_name, before, reason="gpu serving test done", actor="test", settings=services)
    assert cpu_device == "cpu"
    assert gpu_device.startswith("cuda"), gpu_device
    assert max(abs(a - b) for a, b in zip(cpu, gpu, strict=True)) < 1e-4
