"""The Flywheel view's web app, mounted in the Airflow api-server by plugins/flywheel_links.py,
and the task-level extra links of the data, training and monitoring DAGs.

Airflow does not authenticate a plugin's FastAPI app: every route here resolves the caller from
the Airflow JWT (the UI's ``_token`` cookie, or an ``Authorization: Bearer`` header) with the
api-server's own auth manager. A page request without a valid token is sent to Airflow's login
(and back); any other request gets 401/403.

Routes (under :data:`URL_PREFIX`):

- ``/`` the view (flywheel.airflow.view), for a user allowed Airflow's plugin views;
- ``/reports/<key>`` a published reports-zone object (Data Docs, Evidently reports);
- ``/task/<link>?dag_id=&run_id=&task_id=&map_index=`` where a task's extra link goes: what
  the task instance returned (its XCom), for a user allowed to read that DAG's task instances.
"""

import functools
import mimetypes
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from flywheel.core.config import Settings, get_settings

URL_PREFIX = "/flywheel"


@dataclass(frozen=True)
class TaskLink:
    """An extra link of one task of the Flywheel DAGs of a kind (``<use case>_<kind>``)."""

    slug: str
    label: str
    kind: str
    task_id: str


TASK_LINKS = (
    TaskLink("data-docs", "Flywheel: GX Data Docs", "data", "validate"),
    TaskLink("mlflow-run", "Flywheel: MLflow run", "training", "train"),
    TaskLink("drift-report", "Flywheel: Evidently drift report", "monitoring", "drift_check"),
)


class TaskLinkError(LookupError):
    """A task link cannot be followed: unknown link, or the task has not produced its output."""


def spec_names(settings: Settings) -> frozenset[str]:
    """The names of the specs that load (their DAGs are ``<name>_<kind>``); read again only when a
    spec file changes (the UI asks for every link of a task instance it shows)."""
    folder = Path(settings.specs_dir)
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.yaml")))
    return _spec_names(folder, stamp)


@functools.lru_cache(maxsize=4)
def _spec_names(folder: Path, stamp: tuple[tuple[str, int], ...]) -> frozenset[str]:
    from flywheel.core.catalog import load_folder

    return frozenset(spec.name for spec in load_folder(folder).specs.values())


def task_link_url(link: TaskLink, *, dag_id: str, task_id: str, run_id: str, map_index: int,
                  names: Set[str], settings: Settings) -> str:
    """The URL of ``link`` for one task instance; "" (no link) for a task it does not belong to."""
    use_case = dag_id.removesuffix(f"_{link.kind}")
    if task_id != link.task_id or use_case == dag_id or use_case not in names:
        return ""
    query = urlencode({"dag_id": dag_id, "task_id": task_id, "run_id": run_id, "map_index": map_index})
    return f"{settings.airflow_url}{URL_PREFIX}/task/{link.slug}?{query}"


def task_target(slug: str, produced: Any, settings: Settings) -> str:
    """Where a task link leads, from what its task returned; relative targets are the view's routes.

    Raises :class:`TaskLinkError` when the output lacks what the link needs.
    """
    from flywheel.airflow import view

    produced = produced if isinstance(produced, dict) else {}
    if slug == "data-docs":
        target = view.report_href((produced.get("data_docs") or {}).get("uri"), settings)
    elif slug == "drift-report":
        target = view.report_href(produced.get("html_uri"), settings)
    elif slug == "mlflow-run":
        target = _mlflow_run(produced.get("run_id"), settings)
    else:
        raise TaskLinkError(f"unknown Flywheel task link {slug!r}")
    if not target:
        raise TaskLinkError(f"the task produced nothing the {slug!r} link can open")
    return target


def _mlflow_run(run_id: Any, settings: Settings) -> str | None:
    if not run_id:
        return None
    from flywheel.airflow import view
    from flywheel.training import registry

    run = registry.client(settings).get_run(str(run_id))
    return view.mlflow_run_url(settings, run.info.experiment_id, str(run_id))


def operator_links() -> list[Any]:
    """One Airflow global operator link per :data:`TASK_LINKS` entry (a link on other tasks is empty).

    Global, since the DAGs' tasks are TaskFlow tasks (their operator class is Airflow's); each
    link filters on the DAG id and task id of the task instance it is asked about.
    """
    from airflow.sdk import BaseOperatorLink

    def make(link: TaskLink) -> type:
        def get_link(self: Any, operator: Any, *, ti_key: Any) -> str:
            settings = get_settings()
            return task_link_url(link, dag_id=ti_key.dag_id, task_id=ti_key.task_id, run_id=ti_key.run_id,
                                 map_index=ti_key.map_index, names=spec_names(settings), settings=settings)

        name = "Flywheel" + "".join(part.capitalize() for part in link.slug.split("-")) + "Link"
        return type(name, (BaseOperatorLink,), {"name": link.label, "get_link": get_link})

    return [make(link)() for link in TASK_LINKS]


# ---- the app ---------------------------------------------------------------------------------


def create_app() -> Any:
    """The FastAPI app the plugin mounts at :data:`URL_PREFIX` of the api-server."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    app = FastAPI(title="Flywheel", docs_url=None, redoc_url=None, openapi_url=None)

    async def page_user(request: Request) -> Any:
        return await _user(request, redirect=True)

    async def api_user(request: Request) -> Any:
        return await _user(request, redirect=False)

    PageUser = Annotated[Any, Depends(page_user)]  # noqa: N806 - a type alias, named as one
    ApiUser = Annotated[Any, Depends(api_user)]  # noqa: N806

    @app.exception_handler(_LoginRequired)
    async def to_login(request: Request, exc: _LoginRequired) -> RedirectResponse:
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)

    @app.get("/", response_class=HTMLResponse)
    def index(user: PageUser) -> HTMLResponse:
        from flywheel.airflow import view

        settings = get_settings()
        _allow_view(user)
        return HTMLResponse(view.render(view.rows(settings), user=user.get_name()),
                            headers={"Cache-Control": "no-store"})

    @app.get("/reports/{key:path}")
    def report(key: str, user: PageUser) -> Response:
        _allow_view(user)
        body, kind = _published_report(key)
        return Response(body, media_type=kind, headers={"Cache-Control": "no-store",
                                                        "X-Content-Type-Options": "nosniff"})

    @app.get("/task/{slug}")
    def task(slug: str, dag_id: str, task_id: str, run_id: str, user: PageUser,
             map_index: int = -1) -> RedirectResponse:
        _allow_task_read(user, dag_id)
        return RedirectResponse(_task_redirect(slug, dag_id=dag_id, task_id=task_id, run_id=run_id,
                                               map_index=map_index), status_code=307)

    @app.get("/api/use-cases")
    def use_cases(user: ApiUser) -> list[dict[str, Any]]:
        from dataclasses import asdict

        from flywheel.airflow import view

        _allow_view(user)
        return [asdict(row) for row in view.rows(get_settings())]

    return app


def _published_report(key: str) -> tuple[bytes, str]:
    """A published report's bytes and media type (HTTP 404 for anything else)."""
    from botocore.exceptions import ClientError
    from fastapi import HTTPException

    from flywheel.airflow import view
    from flywheel.core import storage

    if not view.published(key):
        raise HTTPException(404, f"no published report at {key!r}")
    try:
        body = storage.get_bytes("reports", key, settings=get_settings())
    except ClientError as exc:
        raise HTTPException(404, f"no report at {key!r}") from exc
    return body, mimetypes.guess_type(key)[0] or "application/octet-stream"


def _task_redirect(slug: str, *, dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """Where a task link goes (HTTP 404 while the task has not produced it)."""
    from fastapi import HTTPException

    produced = _task_output(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)
    try:
        target = task_target(slug, produced, get_settings())
    except TaskLinkError as exc:
        raise HTTPException(404, f"{dag_id}.{task_id} ({run_id}): {exc}") from exc
    return target if target.startswith(("http://", "https://")) else f"{URL_PREFIX}/{target}"


class _LoginRequired(Exception):
    """A page request without a valid Airflow token."""


async def _user(request: Any, *, redirect: bool) -> Any:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import HTTPException
    from fastapi.security.utils import get_authorization_scheme_param

    scheme, credentials = get_authorization_scheme_param(request.headers.get("Authorization"))
    bearer = None
    if scheme.lower() == "bearer" and credentials:
        from fastapi.security import HTTPAuthorizationCredentials

        bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)
    try:
        return await get_user(request, None, bearer)
    except HTTPException as exc:
        if redirect and exc.status_code in (401, 403) and bearer is None:
            raise _LoginRequired() from exc
        raise


def _allow_view(user: Any) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from fastapi import HTTPException

    if not get_auth_manager().is_authorized_view(access_view=AccessView.PLUGINS, user=user):
        raise HTTPException(403, "not allowed to see Airflow's plugin views")


def _allow_task_read(user: Any, dag_id: str) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from fastapi import HTTPException

    if not get_auth_manager().is_authorized_dag(method="GET", access_entity=DagAccessEntity.TASK_INSTANCE,
                                                details=DagDetails(id=dag_id), user=user):
        raise HTTPException(403, f"not allowed to read the task instances of {dag_id}")


def _task_output(*, dag_id: str, task_id: str, run_id: str, map_index: int) -> Any:
    """What the task instance returned (its ``return_value`` XCom), None when it has not yet."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=run_id, key="return_value", dag_ids=dag_id, task_ids=task_id,
                                   map_indexes=map_index, limit=1)
        found = session.scalars(query).first()
        return XComModel.deserialize_value(found) if found is not None else None
