import pytest

from flywheel.training.lineage import code_version, package_versions, spec_digest
from flywheel.training.promotion import AuditRecord, _previous_champion

pytestmark = pytest.mark.unit


def record(frm, to, action="promote", outcome="done"):
    return AuditRecord(model="m", action=action, from_version=frm, to_version=to, actor="a", reason="r", at="t",
                       outcome=outcome)


def test_rollback_target_is_the_champion_before_the_current_one():
    log = [record(None, "1"), record("1", "2"), record("2", "3")]
    assert _previous_champion(log, "3") == "2"
    # a rollback is an undo of the last move: after 3 → 2, rolling back again returns to 3
    log.append(record("3", "2", "rollback"))
    assert _previous_champion(log, "2") == "3"
    assert _previous_champion([record(None, "1")], "1") is None
    # refused and failed moves did not move the alias: a rollback looks past them
    log += [record("2", "4", outcome="refused"), record("4", "2", outcome="failed")]
    assert _previous_champion(log, "2") == "3"
    assert _previous_champion([*log, record("2", "5", outcome="pending")], "5") == "2"  # it landed


def test_lineage_helpers(spec, tmp_path):
    code = code_version()
    assert code["dirty"] in ("true", "false") and len(code["commit"]) == 40
    assert code_version(tmp_path) == {"commit": "unknown", "dirty": "unknown"}
    assert package_versions(("pandas", "no-such-package-xyz"))["no-such-package-xyz"] == "not installed"
    assert spec_digest(spec) == spec_digest(spec) and len(spec_digest(spec)) == 64
