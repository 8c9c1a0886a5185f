"""Champion moves are compare-and-set and audited first, on the real SeaweedFS and MLflow.

- The lease (S3 conditional writes) admits one holder among racing processes, and one taker of
  an expired lease.
- A gate whose champion moved during its run (a manual promotion, a rollback) does not
  overwrite it: it records the refusal and stops. Of several gates racing on one champion,
  exactly one promotes.
- The audit record is in the store before the alias moves; a move the registry refuses leaves a
  ``failed`` record and the champion untouched, and a rollback ignores it.

The model versions are registered with a placeholder artifact: these tests move aliases, they do
not load models. Reuses the session stack (``services``); a few seconds.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from flywheel.core import layout, lease, storage
from flywheel.core.spec import load_any_spec_file
from flywheel.training import promotion, registry, trainer
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(services):
    """One MLflow run whose (empty) artifact folder the placeholder versions point at."""
    client = registry.client(services)
    experiment = client.get_experiment_by_name("registry-safety")
    ident = experiment.experiment_id if experiment else client.create_experiment("registry-safety")
    return client.create_run(ident).info


def add_versions(services, name: str, run, count: int) -> None:
    for _ in range(count):
        registry.client(services).create_model_version(name, source=f"{run.artifact_uri}/model", run_id=run.run_id)


@pytest.fixture
def model(services, run):
    """A fresh registered model with three versions, v1 the champion (promoted by a gate)."""
    name = f"safety-{uuid.uuid4().hex[:8]}"
    registry.client(services).create_registered_model(name)
    add_versions(services, name, run, 3)
    promotion.promote(name, "1", reason="first gate", actor="training-gate:r0", expected=None, settings=services)
    return name


def champion(services, name: str) -> str:
    return str(registry.alias_version(name, registry.CHAMPION, settings=services).version)


def gate(services, name: str, version: str, *, evaluated: str | None) -> tuple[bool, str]:
    """The training gate's promotion (trainer.gate_promote) of a version that passed the gate
    against the champion ``evaluated``."""
    decision = registry.GateDecision(True, f"v{version} beats the champion", 0.9, 0.1, 0.5)
    spec = load_any_spec_file(ROOT / "models" / "fraud.yaml").model_copy(update={"model_name": name})
    return trainer.gate_promote(spec, version, decision, expected=evaluated, actor=f"training-gate:{version}",
                                settings=services)


def test_the_lease_admits_one_holder_and_one_taker_of_an_expired_lease(services):
    # The racers' leases last 60 s, so a racer the loaded machine delays (building a boto3
    # client takes seconds at load 14) cannot legitimately find an expired lease and win too:
    # with a 1 s TTL, CI once saw two "winners" that way. The expired lease comes from a holder
    # that "stalled" (a zero TTL) instead of from sleeping past a short one.
    def race_on(key: str) -> list[str]:
        start = threading.Barrier(8)

        def race(i: int) -> str:
            start.wait()
            try:
                lease.acquire(key, holder=f"racer-{i}", ttl_s=60.0, wait_s=0.0, settings=services)
            except lease.LeaseBusy:
                return "busy"
            return "won"

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(race, range(8)))

    fresh = f"locks/test-{uuid.uuid4().hex[:8]}/champion.json"
    first = race_on(fresh)
    assert first.count("won") == 1, first
    with pytest.raises(lease.LeaseBusy):  # held: a latecomer does not get it either
        lease.acquire(fresh, holder="late", ttl_s=60.0, wait_s=0.0, settings=services)

    stale = f"locks/test-{uuid.uuid4().hex[:8]}/champion.json"
    lease.acquire(stale, holder="stalled", ttl_s=0.0, wait_s=0.0, settings=services)
    time.sleep(0.05)
    second = race_on(stale)
    assert second.count("won") == 1, second  # exactly one takes the expired lease over


def test_a_gate_does_not_overwrite_a_manual_promotion_made_during_its_run(services, model):
    # The gate evaluated v3 against v1; meanwhile a person promoted v2.
    promotion.promote(model, "2", reason="hotfix by hand", actor="oncall", settings=services)
    promoted, reason = gate(services, model, "3", evaluated="1")
    assert not promoted and champion(services, model) == "2"
    assert "refused: the champion is v2, not v1" in reason
    last = promotion.history(model, settings=services)[-1]
    assert (last.outcome, last.actor, last.from_version, last.to_version) == ("refused", "training-gate:3", "2", "3")


def test_a_gate_does_not_undo_a_rollback_made_during_its_run(services, model):
    promotion.promote(model, "2", reason="gate", actor="training-gate:r1", expected="1", settings=services)
    # The gate evaluated v3 against v2; meanwhile v2 was rolled back to v1.
    promotion.rollback(model, reason="v2 misbehaves", actor="oncall", settings=services)
    promoted, _ = gate(services, model, "3", evaluated="2")
    assert not promoted and champion(services, model) == "1"
    assert [r.outcome for r in promotion.history(model, settings=services)] == ["done", "done", "done", "refused"]


def test_of_gates_racing_on_one_champion_exactly_one_promotes(services, model, run):
    add_versions(services, model, run, 3)  # v4..v6
    versions = ["2", "3", "4", "5", "6"]
    start = threading.Barrier(len(versions))

    def race(version: str) -> bool:
        start.wait()
        return gate(services, model, version, evaluated="1")[0]

    with ThreadPoolExecutor(len(versions)) as pool:
        outcomes = dict(zip(versions, pool.map(race, versions), strict=True))
    winners = [v for v, won in outcomes.items() if won]
    assert len(winners) == 1, outcomes
    assert champion(services, model) == winners[0]
    records = promotion.history(model, settings=services)[1:]
    assert sorted(r.outcome for r in records) == ["done"] + ["refused"] * 4
    assert all(r.from_version == winners[0] for r in records if r.outcome == "refused")


def test_the_audit_record_is_written_before_the_alias_moves(services, model, monkeypatch):
    seen: list[list[tuple[str, str]]] = []
    real = registry.set_alias

    def watched(name, alias, version, *, settings=None):
        # What the store holds at the moment the alias moves (the move itself is real).
        seen.append([(r.to_version, r.outcome) for r in promotion.history(name, settings=services)])
        real(name, alias, version, settings=settings)

    monkeypatch.setattr(registry, "set_alias", watched)
    promotion.promote(model, "2", reason="by hand", actor="oncall", settings=services)
    assert seen == [[("1", "done"), ("2", "pending")]]
    assert champion(services, model) == "2"
    assert promotion.history(model, settings=services)[-1].outcome == "done"


def test_a_move_the_registry_refuses_leaves_a_failed_record_and_the_champion(services, model, monkeypatch):
    """The registry failing mid-move cannot be caused on the shared MLflow without taking it
    down for every other test: the fault is injected at the one call that moves the alias."""

    def down(*args, **kwargs):
        raise ConnectionError("MLflow is unreachable")

    monkeypatch.setattr(registry, "set_alias", down)
    with pytest.raises(ConnectionError):
        promotion.promote(model, "2", reason="by hand", actor="oncall", settings=services)
    monkeypatch.undo()
    assert champion(services, model) == "1"
    last = promotion.history(model, settings=services)[-1]
    assert (last.to_version, last.outcome) == ("2", "failed")
    # The lease was given back, and a rollback does not mistake the failed move for a real one.
    assert not storage.list_keys("reports", layout.champion_lease_key(model), settings=services)
    with pytest.raises(promotion.PromotionError, match="no earlier champion"):
        promotion.rollback(model, reason="undo", actor="oncall", settings=services)


def test_promoting_a_version_that_does_not_exist_is_one_clear_error(services, model):
    with pytest.raises(promotion.PromotionError, match="has no version '9'"):
        promotion.promote(model, "9", reason="typo", actor="oncall", settings=services)
    assert champion(services, model) == "1" and len(promotion.history(model, settings=services)) == 1
