"""The Flywheel view in the real Airflow UI, driven by a headless Chromium.

The real api-server (its auth manager, the plugins folder of this repository) runs alone on its
own port beside the session stack (SeaweedFS + MLflow with 9 days of fraud data): the view reads
the real registry and the reports the monitoring checks wrote. The browser logs in through
Airflow's login page, opens the view, and every link of the page is followed. Screenshots are
kept under ``.flywheel/test-artifacts/airflow-view/`` (git-ignored).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from flywheel.airflow import ui, view
from flywheel.core.config import MLFLOW_USERS, PROJECT_ROOT, Settings
from flywheel.monitoring import checks
from flywheel.stack import launcher as stack
from flywheel.training import registry
from tests.ports import ports

from .serving_support import END, champion_version, source_server

pytestmark = pytest.mark.integration

VIEW_PORTS = ports(14000)
ARTIFACTS = PROJECT_ROOT / ".flywheel" / "test-artifacts" / "airflow-view"
# A page load or element wait: the view after login renders every use case, slow on a loaded 2-core CI box
# (Chromium's renderer timed out at 60 s there).
BROWSER_WAIT_S = 180
CARD = "model_card/model_card.md"


@pytest.fixture(scope="module")
def airflow(services: Settings, loaded: dict, spec, tmp_path_factory) -> Iterator[tuple[Settings, str]]:
    """The api-server alone, over a specs folder holding this repository's specs and a broken one;
    the champion has a challenger alias and a model card; one monitoring day has been concluded."""
    version = champion_version(spec, services)
    observed = checks.run_checks(spec, END, settings=services)
    checks.conclude(spec, observed, run_id="view-test", settings=services)
    mlflow = registry.client(services)
    mlflow.set_registered_model_alias(spec.model_name, "challenger", version)
    mlflow.set_model_version_tag(spec.model_name, version, view.MODEL_CARD_TAG, CARD)

    specs = tmp_path_factory.mktemp("view-specs") / "models"
    shutil.copytree(PROJECT_ROOT / "models", specs)
    (specs / "zz_broken.yaml").write_text("kind: pipeline\nname: zz_broken\n")
    ported = services.ports.model_copy(update={"airflow": VIEW_PORTS.airflow,
                                               "airflow_worker_logs": VIEW_PORTS.airflow_worker_logs,
                                               "airflow_trigger_logs": VIEW_PORTS.airflow_trigger_logs,
                                               "model_server": VIEW_PORTS.model_server})
    settings = services.model_copy(update={"ports": ported, "airflow_url": f"http://127.0.0.1:{ported.airflow}",
                                           "model_server_url": f"http://127.0.0.1:{ported.model_server}"})
    # The model server the Swagger link points at (from source: the champion, no bento build).
    with source_server(services, tmp_path_factory.mktemp("view-model-server"), port=ported.model_server):
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FLYWHEEL_SPECS_DIR", str(specs))  # the api-server inherits it (spec folders are not passed)
            ready = stack.up(settings, services=["airflow-api-server"])
        try:
            yield ready, version
        finally:
            stack.down(ready, services=["airflow-api-server"])
        mlflow.delete_registered_model_alias(spec.model_name, "challenger")
        mlflow.delete_model_version_tag(spec.model_name, version, view.MODEL_CARD_TAG)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1600,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "chromium"
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))
    driver.set_page_load_timeout(BROWSER_WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _login(driver, settings: Settings) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, BROWSER_WAIT_S)
    driver.get(f"{settings.airflow_url}/flywheel/")
    password = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=password]")))
    assert "/auth/login" in driver.current_url  # the view sent an anonymous browser to Airflow's login
    _shot(driver, "1-login")
    driver.find_element(By.CSS_SELECTOR, "input:not([type=password])").send_keys(settings.airflow_user)
    password.send_keys(settings.airflow_password.get_secret_value())
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "use-cases")))  # back on the view


def test_view_lists_use_cases_behind_airflow_login_and_every_link_answers(airflow, browser, spec) -> None:
    from selenium.webdriver.common.by import By

    settings, version = airflow
    anonymous = httpx.get(f"{settings.airflow_url}/flywheel/api/use-cases", timeout=30)
    assert anonymous.status_code == 401  # Airflow does not guard plugin apps: the view does
    assert httpx.get(f"{settings.airflow_url}/flywheel/", timeout=30).status_code == 303

    _login(browser, settings)
    _shot(browser, "2-view")
    page = browser.page_source
    stored = json.loads((settings.home / "secrets.json").read_text())
    assert not [name for name, secret in stored.items() if len(secret) >= 8 and secret in page]

    fraud = browser.find_element(By.CSS_SELECTOR, f'tr[data-use-case="{spec.name}"]')
    cell = {name: fraud.find_element(By.CLASS_NAME, name).text
            for name in ("alias-champion", "alias-challenger", "alias-shadow", "status-drift", "decision")}
    assert cell["alias-champion"] == cell["alias-challenger"] == version and cell["alias-shadow"] == ""
    summary = view.latest_summary(spec, settings)
    assert summary is not None and summary["ds"] == END.isoformat()
    assert cell["status-drift"] == summary["drift"]["status"]
    assert cell["decision"].startswith(summary["decision"]["action"]) and summary["decision"]["reason"] in cell["decision"]
    broken = browser.find_element(By.CSS_SELECTOR, 'tr[data-use-case="zz_broken"]').text
    assert "zz_broken" in broken and "invalid" in broken.lower()  # its error shows; fraud rendered anyway

    links = {a.text: a.get_attribute("href") for a in fraud.find_elements(By.CSS_SELECTOR, "td.links a")}
    assert {"MLflow run", f"MLflow version {version}", "Model card", "GX Data Docs", "Evidently report",
            "Swagger"} <= set(links)
    _follow(browser, settings, links)
    _embedded_in_airflow_ui(browser, settings)

    # a task link of a run whose drift_check has not returned: the view answers 404 saying so
    url = ui.task_link_url(ui.TASK_LINKS[2], dag_id=f"{spec.name}_monitoring", task_id="drift_check",
                           run_id="manual__never", map_index=-1, names={spec.name}, settings=settings)
    token = browser.get_cookie("_token")["value"]
    answer = httpx.get(url, cookies={"_token": token}, timeout=30)
    assert answer.status_code == 404 and "produced nothing" in answer.text, answer.text
    assert httpx.get(url, timeout=30).status_code == 303  # anonymous: to the login


def _embedded_in_airflow_ui(driver, settings: Settings) -> None:
    """The nav entry's page: the Airflow UI with the view in its frame."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, BROWSER_WAIT_S)
    driver.get(f"{settings.airflow_url}/plugin/flywheel")
    wait.until(ec.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")))
    wait.until(ec.presence_of_element_located((By.ID, "use-cases")))
    driver.switch_to.default_content()
    _shot(driver, "4-in-the-airflow-ui")


def _follow(driver, settings: Settings, links: dict[str, str]) -> None:
    """Every link answers: the view's own in the logged-in browser (HTTP 200, the report's page),
    MLflow's with its login challenge for an anonymous caller and 200 for the read-only identity,
    the model API's Swagger UI (200)."""
    token = driver.get_cookie("_token")["value"]
    stored = json.loads((settings.home / "secrets.json").read_text())
    reader = (MLFLOW_USERS["reader"], stored["mlflow_reader_password"])
    for label, href in links.items():
        where = urlsplit(href)
        if href.startswith(str(settings.airflow_url)):
            answer = httpx.get(href, cookies={"_token": token}, timeout=30)
            assert answer.status_code == 200, (label, href, answer.status_code)
            assert httpx.get(href, timeout=30, follow_redirects=False).status_code == 303  # anonymous: to login
            driver.get(href)
            _shot(driver, f"3-{label.lower().replace(' ', '-')}")
            assert "<html" in driver.page_source.lower()
        elif href.startswith(str(settings.mlflow_tracking_uri)):
            base = f"{where.scheme}://{where.netloc}{where.path}"
            challenge = httpx.get(base, timeout=30)
            assert challenge.status_code == 401 and "basic" in challenge.headers.get("www-authenticate", "").lower()
            assert httpx.get(base, auth=reader, timeout=30).status_code == 200, (label, href)
        else:  # the model API's Swagger UI, open to read (its routes take the API key)
            assert label == "Swagger" and href == f"{settings.model_server_url}/", (label, href)
            answer = httpx.get(href, timeout=30)
            assert answer.status_code == 200 and "swagger" in answer.text.lower(), (href, answer.status_code)
            driver.get(href)
            _shot(driver, "3-swagger")
