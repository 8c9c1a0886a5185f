"""Limits at the edge of the model server, without services: the body reader (size counted while
streaming, a deadline for slow bodies, a client that leaves), the declared-length check, the API
key the server needs to start, and the settings and spec field that configure them."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from flywheel.core.config import Settings
from flywheel.core.spec import SpecError, load_spec_file
from flywheel.serving import edge
from flywheel.serving.server import ServingError

pytestmark = pytest.mark.unit
LIMIT = 4096


def stream(chunks: list[bytes], *, then_wait: bool = False):
    """An ASGI ``receive`` that hands out ``chunks`` (the last one ends the body unless
    ``then_wait``: then it never ends); ``pulled`` counts the messages read."""
    pulled = [0]

    async def receive():
        if pulled[0] == len(chunks):
            await asyncio.Event().wait()  # a client that stopped sending
        pulled[0] += 1
        more = then_wait or pulled[0] < len(chunks)
        return {"type": "http.request", "body": chunks[pulled[0] - 1], "more_body": more}

    return receive, pulled


def read(receive, *, limit: int = LIMIT, timeout_s: float = 5.0) -> bytes:
    reader = edge.BodyReader(limit=limit, timeout_s=timeout_s)

    async def go():
        return await reader.read(receive)

    return asyncio.run(go())


def test_a_body_within_the_limit_is_read_whole():
    receive, _ = stream([b"a" * 1000, b"b" * 1000, b"c" * (LIMIT - 2000)])
    assert read(receive) == b"a" * 1000 + b"b" * 1000 + b"c" * (LIMIT - 2000)
    assert read(stream([b'{"x": 1}'])[0]) == b'{"x": 1}'


def test_a_streamed_body_is_refused_at_the_limit_and_the_rest_is_never_read():
    receive, pulled = stream([b"x" * 1024] * 100)  # chunked: no Content-Length to check first
    with pytest.raises(edge.BodyTooLarge) as info:
        read(receive)
    assert pulled[0] == LIMIT // 1024 + 1, "reading stops at the chunk that crosses the limit"
    assert info.value.status == 413
    body = json.loads(info.value.payload())
    assert body["limit_bytes"] == LIMIT and str(LIMIT) in body["error"] and "serving_max_body_bytes" in body["error"]


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    assert edge.content_length([(b"host", b"x"), (b"content-length", b"52428800")]) == 52_428_800
    assert edge.content_length([(b"transfer-encoding", b"chunked")]) is None
    edge.check_declared_length(LIMIT, LIMIT)
    edge.check_declared_length(None, LIMIT)
    with pytest.raises(edge.BodyTooLarge, match="Content-Length 52428800"):
        edge.check_declared_length(52_428_800, LIMIT)


def test_a_body_that_stops_arriving_is_a_408():
    receive, pulled = stream([b'{"amount": '], then_wait=True)
    with pytest.raises(edge.BodyTimeout) as info:
        read(receive, timeout_s=0.2)
    assert info.value.status == 408 and pulled[0] == 1
    assert json.loads(info.value.payload())["timeout_s"] == 0.2


def test_the_deadline_cancels_only_the_slow_read_and_the_reader_keeps_serving():
    reader = edge.BodyReader(limit=LIMIT, timeout_s=0.2)
    slow, _ = stream([b"{"], then_wait=True)

    async def go():
        stuck = asyncio.create_task(reader.read(slow))
        await asyncio.sleep(0)  # the slow read is in flight first
        quick = [await reader.read(stream([b"%d" % i])[0]) for i in range(3)]
        with pytest.raises(edge.BodyTimeout):
            await stuck
        after = await reader.read(stream([b"after", b" the timeout"])[0])
        return quick, after, reader._reads, reader._expired

    quick, after, reads, expired = asyncio.run(go())
    assert quick == [b"0", b"1", b"2"] and after == b"after the timeout"
    assert not reads and not expired, "nothing is left behind"


def test_a_client_that_leaves_is_not_answered():
    async def gone():
        return {"type": "http.disconnect"}

    with pytest.raises(edge.ClientDisconnected):
        read(gone)


def settings_with(tmp_path, monkeypatch, **values) -> Settings:
    monkeypatch.delenv("FLYWHEEL_API_KEY", raising=False)
    monkeypatch.delenv("FLYWHEEL_SERVING_INSECURE", raising=False)
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    return Settings(home=tmp_path, **values)


@pytest.mark.parametrize("key", [None, ""])
def test_without_an_api_key_the_server_refuses_to_start(tmp_path, monkeypatch, key):
    settings = settings_with(tmp_path, monkeypatch, api_key=None if key is None else SecretStr(key))
    assert edge.configured_api_key(settings) is None
    with pytest.raises(ServingError) as info:
        edge.check_api_key(settings)
    message = str(info.value)
    assert "\n" not in message and "FLYWHEEL_API_KEY" in message and "--insecure" in message


def test_insecure_must_be_asked_for_and_is_loud(tmp_path, monkeypatch, caplog):
    settings = settings_with(tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="flywheel.serving.edge"):
        edge.check_api_key(settings, insecure=True)
        edge.check_api_key(settings_with(tmp_path, monkeypatch, serving_insecure=True))
    assert [r.getMessage() for r in caplog.records] == [edge.INSECURE, edge.INSECURE]
    assert all(edge.is_true(v) for v in ("true", "1", "YES", " on ")) and not edge.is_true("") \
        and not edge.is_true("false")


def test_a_configured_key_is_required_insecure_or_not(tmp_path, monkeypatch, caplog):
    (tmp_path / "secrets.json").write_text(json.dumps({"api_key": "generated-by-flywheel-up"}))
    settings = settings_with(tmp_path, monkeypatch)
    assert edge.configured_api_key(settings) == b"generated-by-flywheel-up"
    edge.check_api_key(settings)
    with caplog.at_level(logging.WARNING, logger="flywheel.serving.edge"):
        edge.check_api_key(settings, insecure=True)
    assert "ignored" in caplog.text


def test_edge_settings_reach_the_model_server_and_the_body_deadline_ends_first(tmp_path, monkeypatch):
    settings = settings_with(tmp_path, monkeypatch, serving_insecure=True, serving_max_body_bytes=65536)
    env = settings.component_env()
    assert env["FLYWHEEL_SERVING_INSECURE"] == "true" and env["FLYWHEEL_SERVING_MAX_BODY_BYTES"] == "65536"
    assert float(env["FLYWHEEL_SERVING_BODY_TIMEOUT_S"]) < float(env["FLYWHEEL_SERVING_REQUEST_TIMEOUT_S"])
    assert Settings(home=tmp_path).serving_max_body_bytes >= 1000 * 2048  # MAX_BATCH rows of 2 KiB
    with pytest.raises(ValidationError, match="serving_body_timeout_s"):
        Settings(home=tmp_path, serving_body_timeout_s=10, serving_request_timeout_s=10)


def test_the_out_of_contract_policy_is_a_spec_field_checked_on_load(tmp_path, spec):
    assert spec.serving.out_of_contract == "flag"
    raw = yaml.safe_load(spec._path.read_text())
    for value, ok in (("reject", True), ("flag", True), ("drop", False), (True, False)):
        path = tmp_path / "fraud.yaml"
        path.write_text(yaml.safe_dump(raw | {"serving": {"out_of_contract": value}}))
        if ok:
            assert load_spec_file(path).serving.out_of_contract == value
            continue
        with pytest.raises(SpecError) as info:
            load_spec_file(path)
        assert str(path) in str(info.value) and "serving.out_of_contract" in str(info.value)
    path.write_text(yaml.safe_dump(raw | {"serving": {"out_of_contrakt": "flag"}}))
    with pytest.raises(SpecError, match="serving.out_of_contrakt"):
        load_spec_file(path)
