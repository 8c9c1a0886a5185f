import json

import pytest
import yaml
from pydantic import SecretStr

from flywheel.core.config import Profile, Settings, mask
from flywheel.core.spec import SpecError, load_spec_file

pytestmark = pytest.mark.unit


def test_env_overrides_file_and_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "flywheel.toml"
    cfg.write_text('bucket_prefix = "fromfile"\nprofile = "production"\n[ports]\ns3 = 9999\n')
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(cfg))
    monkeypatch.setenv("FLYWHEEL_BUCKET_PREFIX", "fromenv")
    settings = Settings(home=tmp_path)
    assert settings.bucket_prefix == "fromenv"
    assert settings.profile is Profile.PRODUCTION
    assert settings.ports.s3 == 9999
    assert settings.s3_endpoint_url == "http://127.0.0.1:9999"
    assert settings.online_store_config()["type"] == "redis"


def test_secrets_come_from_the_state_dir_not_code(tmp_path, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    (tmp_path / "secrets.json").write_text(json.dumps({"s3_access_key": "AKIA123456", "api_key": "k" * 20}))
    settings = Settings(home=tmp_path)
    assert isinstance(settings.s3_access_key, SecretStr)
    assert settings.s3_access_key.get_secret_value() == "AKIA123456"
    assert "AKIA123456" not in repr(settings)
    assert mask("k" * 20) == "kkkk…"


def test_missing_config_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ValueError, match="nope.toml"):
        Settings(home=tmp_path)


def test_spec_loads_and_names_bad_fields(tmp_path, spec):
    assert spec.model_name == "fraud-detector"
    assert spec.target in spec.dataset.contract.columns
    bad = tmp_path / "bad.yaml"
    text = yaml.safe_dump(spec.model_dump(mode="json"))
    bad.write_text(text.replace("train: 0.7", "train: 0.9"))
    with pytest.raises(SpecError, match="split"):
        load_spec_file(bad)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec_file(tmp_path / "missing.yaml")


def test_component_env_carries_settings_but_no_secrets(tmp_path, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    (tmp_path / "secrets.json").write_text(json.dumps({"s3_secret_key": "s3cr3t-value", "api_key": "k3y-value"}))
    settings = Settings(home=tmp_path)
    env = settings.component_env()
    assert env["FLYWHEEL_HOME"] == str(tmp_path) and env["FLYWHEEL_PORTS__S3"] == str(settings.ports.s3)
    assert not any("s3cr3t" in v or "k3y-value" in v for v in env.values())
    # a built bento reads the spec packaged with its own code, unless another folder is configured
    assert "FLYWHEEL_SPECS_DIR" not in env
    elsewhere = Settings(home=tmp_path, specs_dir=tmp_path / "specs").component_env()
    assert elsewhere["FLYWHEEL_SPECS_DIR"] == str(tmp_path / "specs")


@pytest.mark.parametrize("name", ["../fraud", "fraud/../../etc", "", ".", "fraud detection", "a/", "x\n"])
def test_a_name_that_is_no_safe_object_key_is_refused_where_the_key_is_made(name):
    from flywheel.core import layout

    with pytest.raises(layout.LayoutError, match="cannot be part of an object key"):
        layout.audit_prefix(name)
    with pytest.raises(layout.LayoutError):
        layout.partition_prefix(name, "2026-01-01")
    with pytest.raises(layout.LayoutError):
        layout.partition_prefix("transactions", name or "..")
    assert layout.partition_prefix("fraud/user", "2026-01-01") == "fraud/user/ds=2026-01-01/"
    assert layout.reference_key("fraud-detector", "v3") == "reference/fraud-detector/v3.parquet"
