"""A small typed client for the Airflow 3 REST API (``/api/v2``) of the Flywheel stack.

Authentication is the SimpleAuthManager's: ``POST /auth/token`` with the admin user's
username and password (JSON) returns a JWT that is sent as a bearer token and
renewed once when a request answers 401 (expired) or 403 "Invalid JWT token".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import httpx
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from flywheel.core.config import Settings, get_settings

TERMINAL_STATES = frozenset({"success", "failed"})
FAILED_TASK_STATES = frozenset({"failed", "upstream_failed"})
ReprocessBehavior = Literal["none", "failed", "completed"]


class AirflowClientError(RuntimeError):
    """The Airflow API refused a request or answered unexpectedly."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AirflowAuthError(AirflowClientError):
    """The username/password were rejected (or no password is configured)."""


class AirflowTimeout(AirflowClientError, TimeoutError):
    """A wait ended before Airflow reached the expected state."""


class DagNotFound(AirflowClientError):
    """The DAG is not (yet) known to Airflow."""


class DagRunFailed(AirflowClientError):
    """One or more DAG runs ended ``failed``; ``failed_tasks`` maps run id → task ids."""

    def __init__(self, dag_id: str, states: dict[str, str], failed_tasks: dict[str, list[str]]) -> None:
        detail = "; ".join(
            f"{run_id}: {', '.join(tasks) or 'no failed task recorded'}"
            for run_id, tasks in failed_tasks.items()
        )
        super().__init__(f"DAG {dag_id}: {len(failed_tasks)} run(s) failed: {detail}")
        self.dag_id = dag_id
        self.states = states
        self.failed_tasks = failed_tasks


@dataclass(frozen=True)
class DagRun:
    run_id: str
    state: str
    run_type: str
    logical_date: str | None
    conf: dict[str, Any] | None

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> DagRun:
        return cls(
            run_id=body["dag_run_id"],
            state=body["state"],
            run_type=body["run_type"],
            logical_date=body.get("logical_date"),
            conf=body.get("conf"),
        )


@dataclass(frozen=True)
class BackfillProgress:
    """A backfill's runs (run id -> state) and whether Airflow considers it complete."""

    dag_id: str
    backfill_id: int
    states: dict[str, str]
    completed: bool

    @property
    def succeeded(self) -> int:
        return sum(state == "success" for state in self.states.values())

    @property
    def failed(self) -> list[str]:
        return sorted(run for run, state in self.states.items() if state == "failed")

    def done(self, expected: int) -> bool:
        """Every run finished, and all ``expected`` exist (or Airflow says the backfill is over)."""
        finished = all(state in TERMINAL_STATES for state in self.states.values())
        return finished and (len(self.states) >= expected or self.completed)


@dataclass(frozen=True)
class AssetEvent:
    id: int
    asset_id: int
    uri: str | None
    name: str | None
    source_dag_id: str | None
    source_run_id: str | None
    source_task_id: str | None
    timestamp: str
    extra: dict[str, Any] | None

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> AssetEvent:
        return cls(
            id=int(body["id"]),
            asset_id=int(body["asset_id"]),
            uri=body.get("uri"),
            name=body.get("name"),
            source_dag_id=body.get("source_dag_id"),
            source_run_id=body.get("source_run_id"),
            source_task_id=body.get("source_task_id"),
            timestamp=str(body["timestamp"]),
            extra=body.get("extra"),
        )


class AirflowClient:
    """Talks to the api-server at ``settings.airflow_url`` as ``settings.airflow_user``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        timeout: float = 30.0,
        poll_interval: float = 2.0,
        transport: httpx.BaseTransport | None = None,
        on_poll: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.poll_interval = poll_interval
        # Called between polls of every wait (e.g. the embedded stack revives a scheduler that a
        # SQLite write conflict stopped: flywheel.stack.launcher.revive_scheduler).
        self.on_poll = on_poll
        self._http = httpx.Client(
            base_url=str(self.settings.airflow_url), timeout=timeout, transport=transport
        )
        self._token: str | None = None

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- transport -----------------------------------------------------------

    def token(self) -> str:
        """A fresh JWT for the configured user; raises AirflowAuthError when rejected."""
        password = self.settings.airflow_password
        if password is None:
            raise AirflowAuthError("no Airflow password configured: run `flywheel up` first")
        response = self._http.post(
            "/auth/token",
            json={"username": self.settings.airflow_user, "password": password.get_secret_value()},
        )
        if response.status_code in (401, 403):
            raise AirflowAuthError(
                f"Airflow rejected user {self.settings.airflow_user!r}", status_code=response.status_code
            )
        _raise_for(response, "POST /auth/token")
        self._token = str(response.json()["access_token"])
        return self._token

    @retry(
        retry=retry_if_exception(lambda e: isinstance(e, AirflowClientError) and _database_busy(e)),
        wait=wait_exponential(multiplier=0.5, max=8),
        stop=stop_after_delay(45),
        reraise=True,
    )
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send an authenticated request to ``/api/v2<path>``; return the decoded JSON body.

        On SQLite (embedded profile) the api-server answers 500/503 "Database error" /
        "Database is locked" while the scheduler writes: such a request changed nothing
        and is retried with backoff (every write here is idempotent or names its run id).
        """
        url = f"/api/v2{path}"
        response = self._send(method, url, **kwargs)
        if _token_rejected(response):  # renew once
            self._token = None
            response = self._send(method, url, **kwargs)
        _raise_for(response, f"{method} {url}")
        return response.json() if response.content else None

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        token = self._token or self.token()
        return self._http.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs)

    # ---- DAGs ------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/api/v2/monitor/health`` (needs no token)."""
        response = self._http.get("/api/v2/monitor/health")
        _raise_for(response, "GET /api/v2/monitor/health")
        body: dict[str, Any] = response.json()
        return body

    def get_dag(self, dag_id: str) -> dict[str, Any]:
        """The DAG's record; raises DagNotFound until the dag-processor has parsed it."""
        try:
            body: dict[str, Any] = self.request("GET", f"/dags/{dag_id}")
        except AirflowClientError as exc:
            if exc.status_code == 404:
                raise DagNotFound(f"DAG {dag_id} is not known to Airflow", status_code=404) from exc
            raise
        return body

    def pause_between_polls(self) -> None:
        """Sleep one poll interval (after the ``on_poll`` hook, when there is one)."""
        if self.on_poll is not None:
            self.on_poll()
        time.sleep(self.poll_interval)

    def settle_after_unpause(self, dag_id: str, *, timeout: float = 30.0) -> None:
        """Unpausing makes the scheduler create the latest interval's run; on SQLite a backfill
        created in the same instant can fail the scheduler's commit (StaleDataError): wait for it."""
        deadline = time.monotonic() + timeout
        while not self.list_runs(dag_id, limit=1) and time.monotonic() < deadline:
            self.pause_between_polls()
        time.sleep(self.poll_interval)

    def wait_for_dag(self, dag_id: str, *, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed the DAG; the timeout error lists import errors."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get_dag(dag_id)
            except DagNotFound:
                if time.monotonic() > deadline:
                    errors = self.import_errors() or "none"
                    raise AirflowTimeout(
                        f"DAG {dag_id} not parsed after {timeout:.0f} s; import errors: {errors}"
                    ) from None
            time.sleep(self.poll_interval)

    def import_errors(self) -> dict[str, str]:
        """File name → last line of its import error."""
        body = self.request("GET", "/importErrors", params={"limit": 100})
        return {
            err["filename"]: (err["stack_trace"].strip().splitlines() or [""])[-1]
            for err in body["import_errors"]
        }

    def unpause(self, dag_id: str) -> None:
        """Unpause the DAG (DAGs start paused)."""
        self.set_paused(dag_id, paused=False)

    def set_paused(self, dag_id: str, *, paused: bool) -> None:
        self.request(
            "PATCH", f"/dags/{dag_id}", params={"update_mask": "is_paused"}, json={"is_paused": paused}
        )

    # ---- runs ------------------------------------------------------------------

    def trigger(
        self,
        dag_id: str,
        *,
        logical_date: datetime | date | str | None = None,
        conf: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Create a manual run; returns its run id (409 → AirflowClientError if it exists).

        The run id is chosen here when not given, so a retried request cannot create two runs.
        """
        run_id = run_id or f"manual__{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}__{uuid.uuid4().hex[:8]}"
        body: dict[str, Any] = {"logical_date": _iso(logical_date), "conf": dict(conf or {}), "dag_run_id": run_id}
        return str(self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"])

    def clear_run(self, dag_id: str, run_id: str) -> None:
        """Clear every task of a run so the scheduler runs it again (Airflow's "rerun")."""
        self.request("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False})

    def run_for(self, dag_id: str, logical_date: datetime | date | str) -> DagRun | None:
        """The run of a DAG at a logical date, if one exists (logical dates are unique per DAG)."""
        # Filtered here, not with logical_date_gte/lte: on SQLite those filters fail in the
        # api-server ("naive datetime is disallowed", Airflow 3.3).
        if isinstance(logical_date, str):
            logical_date = datetime.fromisoformat(logical_date)
        when = datetime.fromisoformat(str(_iso(logical_date)))
        for run in reversed(self.list_runs(dag_id, limit=1000)):
            if run.logical_date and datetime.fromisoformat(run.logical_date) == when:
                return run
        return None

    def backfill(
        self,
        dag_id: str,
        from_date: datetime | date | str,
        to_date: datetime | date | str,
        *,
        max_active_runs: int = 4,
        reprocess_behavior: ReprocessBehavior = "completed",
        conf: Mapping[str, Any] | None = None,
    ) -> int:
        """Create a backfill (the scheduler runs it); returns the backfill id."""
        body = {
            "dag_id": dag_id,
            "from_date": _iso(from_date),
            "to_date": _iso(to_date),
            "max_active_runs": max_active_runs,
            "reprocess_behavior": reprocess_behavior,
            "run_backwards": False,
            "dag_run_conf": dict(conf or {}),
        }
        deadline = time.monotonic() + 120
        while True:
            try:
                # Creating the runs is one transaction, slow on a busy SQLite: a longer read timeout.
                created = int(self.request("POST", "/backfills", json=body, timeout=90.0)["id"])
            except httpx.TimeoutException:
                # The answer was lost, not necessarily the backfill: look before trying again.
                if time.monotonic() > deadline:
                    raise
            except AirflowClientError as exc:
                if exc.status_code != 409 or time.monotonic() > deadline:
                    raise
            else:
                # On SQLite the commit can still fail after the answer: trust only what persists.
                time.sleep(1)
                if self._backfill_exists(created):
                    return created
                if time.monotonic() > deadline:
                    raise AirflowClientError(f"backfill {created} of {dag_id} was not persisted")
                continue
            # 409 or a timeout after a POST: on SQLite the attempt may have gone through (the
            # backfill is ours) or been rolled back after a lock (it vanishes): check, then retry.
            same = self._active_backfill_like(dag_id, str(body["from_date"]), str(body["to_date"]))
            if same is not None and self._backfill_exists(same):
                return same
            time.sleep(self.poll_interval)

    def _backfill_exists(self, backfill_id: int) -> bool:
        try:
            self.get_backfill(backfill_id)
        except AirflowClientError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    def _active_backfill_like(self, dag_id: str, from_date: str, to_date: str) -> int | None:
        body = self.request("GET", "/backfills", params={"dag_id": dag_id, "limit": 100})
        for b in body["backfills"]:
            if b.get("completed_at") is None and (b["from_date"], b["to_date"]) == (from_date, to_date):
                return int(b["id"])
        return None

    def active_backfills(self, dag_id: str) -> list[int]:
        """Ids of the DAG's backfills that have not completed (Airflow allows one at a time)."""
        body = self.request("GET", "/backfills", params={"dag_id": dag_id, "limit": 100})
        return [int(b["id"]) for b in body["backfills"] if b.get("completed_at") is None]

    def cancel_backfill(self, backfill_id: int) -> None:
        """Cancel a backfill: its queued runs are not started; running ones finish."""
        self.request("PUT", f"/backfills/{backfill_id}/cancel")

    def get_backfill(self, backfill_id: int) -> dict[str, Any]:
        body: dict[str, Any] = self.request("GET", f"/backfills/{backfill_id}")
        return body

    def backfill_runs(self, backfill_id: int) -> list[DagRun]:
        """Runs of the backfill's DAG whose logical date lies in its range."""
        backfill = self.get_backfill(backfill_id)
        return self.runs_between(backfill["dag_id"], backfill["from_date"], backfill["to_date"])

    def runs_between(self, dag_id: str, first: datetime | date | str, last: datetime | date | str) -> list[DagRun]:
        """The DAG's runs whose logical date lies in ``[first, last]`` (filtered here: on SQLite
        the API's ``logical_date_gte/lte`` filters fail, Airflow 3.3)."""
        low, high = (datetime.fromisoformat(str(_iso(v))) for v in (first, last))
        return [run for run in self.list_runs(dag_id, limit=1000)
                if run.logical_date and low <= datetime.fromisoformat(run.logical_date) <= high]

    def backfill_progress(self, backfill_id: int) -> BackfillProgress:
        """How far a backfill is: its runs by state, and whether Airflow marked it complete."""
        backfill = self.get_backfill(backfill_id)
        runs = self.runs_between(backfill["dag_id"], backfill["from_date"], backfill["to_date"])
        return BackfillProgress(
            dag_id=backfill["dag_id"], backfill_id=backfill_id,
            states={run.run_id: run.state for run in runs},
            completed=backfill.get("completed_at") is not None,
        )

    def list_runs(self, dag_id: str, *, limit: int = 100, **filters: str) -> list[DagRun]:
        """The DAG's runs, oldest first; ``filters`` are API query parameters (``state``, ...)."""
        body = self.request(
            "GET", f"/dags/{dag_id}/dagRuns", params={"limit": limit, "order_by": "id", **filters}
        )
        return [DagRun.from_api(run) for run in body["dag_runs"]]

    def get_run(self, dag_id: str, run_id: str) -> DagRun:
        return DagRun.from_api(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))

    # ---- human in the loop (the Required Actions page, over REST) ----------------

    def pending_approvals(self, dag_id: str) -> list[dict[str, Any]]:
        """Human-in-the-loop requests of ``dag_id`` nobody has answered yet (subject, run, task)."""
        body = self.request("GET", f"/dags/{dag_id}/dagRuns/~/hitlDetails",
                            params={"response_received": "false"})
        return [
            {"dag_id": dag_id, "run_id": d["task_instance"]["dag_run_id"],
             "task_id": d["task_instance"]["task_id"], "map_index": d["task_instance"]["map_index"],
             "subject": d.get("subject"), "body": d.get("body"), "options": d.get("options")}
            for d in body["hitl_details"]
        ]

    def respond(self, request: dict[str, Any], option: str) -> dict[str, Any]:
        """Answer one pending request (e.g. ``Approve`` or ``Reject``) as the configured user."""
        path = (f"/dags/{request['dag_id']}/dagRuns/{request['run_id']}/taskInstances/"
                f"{request['task_id']}/{request['map_index']}/hitlDetails")
        return dict(self.request("PATCH", path, json={"chosen_options": [option], "params_input": {}}))

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """Task id (``task[i]`` when mapped) → state for one run."""
        body = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return {
            ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
            for ti in body["task_instances"]
        }

    def wait_for_runs(
        self, dag_id: str, runs: Sequence[str] | int, *, timeout: float = 600.0, per_run: bool = False
    ) -> dict[str, str]:
        """Wait until every run (run ids, or a backfill id) is finished; return run id → state.

        ``per_run``: ``timeout`` is the longest wait for the *next* run to finish (a long backfill
        on a slow or busy machine keeps going while it makes progress), not for all of them.
        Raises DagRunFailed naming the failed tasks of each failed run, and
        AirflowTimeout naming the runs still pending.
        """
        run_ids = [r.run_id for r in self.backfill_runs(runs)] if isinstance(runs, int) else list(runs)
        deadline, left = time.monotonic() + timeout, len(run_ids)
        while True:
            states = {run_id: self.get_run(dag_id, run_id).state for run_id in run_ids}
            pending = {r: s for r, s in states.items() if s not in TERMINAL_STATES}
            if not pending:
                break
            if per_run and len(pending) < left:
                deadline, left = time.monotonic() + timeout, len(pending)
            if time.monotonic() > deadline:
                what = "no run finished in" if per_run else "runs not finished after"
                raise AirflowTimeout(f"DAG {dag_id}: {what} {timeout:.0f} s: {pending}")
            self.pause_between_polls()
        failed = {
            run_id: sorted(t for t, s in self.task_states(dag_id, run_id).items() if s in FAILED_TASK_STATES)
            for run_id, state in states.items()
            if state == "failed"
        }
        if failed:
            raise DagRunFailed(dag_id, states, failed)
        return states

    # ---- assets ----------------------------------------------------------------

    def asset_id(self, asset: str) -> int:
        """Id of the asset whose URI or name is exactly ``asset``.

        Airflow stores URIs normalised (``s3://b/p/`` becomes ``s3://b/p``).
        """
        uri = asset.rstrip("/")
        for key, value in (("uri_pattern", uri), ("name_pattern", asset)):
            body = self.request("GET", "/assets", params={key: value, "limit": 100})
            for record in body["assets"]:
                if record["uri"].rstrip("/") == uri or record["name"] == asset:
                    return int(record["id"])
        raise AirflowClientError(f"asset {asset!r} is not known to Airflow", status_code=404)

    def emit_asset_event(self, asset: str, extra: Mapping[str, Any] | None = None) -> AssetEvent:
        """Create an event of the asset (by URI or name), as a task's outlet would; DAGs
        scheduled on the asset are queued by it (when unpaused)."""
        body = self.request("POST", "/assets/events",
                            json={"asset_id": self.asset_id(asset), "extra": dict(extra or {})})
        return AssetEvent.from_api(body)

    def asset_events(self, asset: str, *, limit: int = 100) -> list[AssetEvent]:
        """Events of the asset (by URI or name), newest first."""
        body = self.request(
            "GET",
            "/assets/events",
            params={"asset_id": self.asset_id(asset), "limit": limit, "order_by": "-timestamp"},
        )
        return [AssetEvent.from_api(event) for event in body["asset_events"]]


def _iso(value: datetime | date | str | None) -> str | None:
    """ISO-8601 with a timezone (the API rejects naive datetimes); dates are midnight UTC."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # "Z", not "+00:00": a "+" in a query string reads as a space (a naive datetime to Airflow).
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _database_busy(error: AirflowClientError) -> bool:
    return error.status_code in (500, 503) and "database" in str(error).lower()


def _token_rejected(response: httpx.Response) -> bool:
    """401 is an expired token; 403 "Invalid JWT token" one signed by another JWT secret."""
    if response.status_code == 401:
        return True
    return response.status_code == 403 and "Invalid JWT token" in response.text


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise AirflowClientError(f"{what} → {response.status_code}: {detail}", status_code=response.status_code)
