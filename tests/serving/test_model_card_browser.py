"""Every version's model card, from evaluate to a person's browser: the same card is in the run's MLflow artifacts,
in the exported bundle and at /model-card of a real gunicorn server, read in headless Chromium from the form page's
link; after a hot swap the page shows the new version's card."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from include.ml.components import card as model_card
from include.ml.components.evaluation import evaluate
from include.ml.components.training import train
from include.ml.config_file import CardConfig, MlflowConfig
from include.ml.entities import EvaluationConfig
from include.release.export import export_bundle
from include.release.signing import LocalSigner
from serving import store as store_mod
from tests.support.browser import chromium, require_chromium
from tests.support.frames import dataset, evaluation_config, training_config
from tests.support.network import free_port, get_json, wait_until
from tests.support.pointers import point
from tests.support.servers import PredictionServer
from tests.support.signing import signing_config, trusted_keys

pytestmark = pytest.mark.integration

require_chromium()

from selenium.webdriver.common.by import By  # noqa: E402 - after the skip, so a machine without a browser skips
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

INTENDED = '<script>window.pwned = 1</script>Ranking wines for a tasting panel.'


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def evaluated_versions(tmp_path: Path) -> list[Any]:
    """Two versions through train and evaluate on a real MLflow store: v1 promoted with a `card:` section whose
    intended_use holds markup, v2 kept (the same model again) with the section left out."""
    mlflow = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=(tmp_path / "art").as_uri(),
                          experiment_name="cards", registered_model_name="card-model")
    base = evaluation_config("regression", mlflow)
    test, data = dataset("regression", rows=40, seed=9), model_card.TrainingData("/data/unit.csv", "ab" * 32, 160)
    results = []
    for run_id, card in (("first", CardConfig(intended_use=INTENDED)), ("second", CardConfig())):
        trained = train(dataset("regression"), training_config("regression", "elasticnet", mlflow), run_id,
                        tmp_path / run_id, dataset_source="/data/unit.csv")
        config = EvaluationConfig(base.schema, base.promotion, base.mlflow, card)
        results.append((trained, evaluate(test, config, trained, tmp_path / f"{run_id}-eval", data=data)))
    return results


def shown(browser: WebDriver, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def test_every_versions_card_is_in_mlflow_the_bundle_and_the_browser(browser: WebDriver, tmp_path: Path) -> None:
    import mlflow

    versions = evaluated_versions(tmp_path)
    store, signer = tmp_path / "store", LocalSigner(signing_config().private_key)
    cards = {}
    for trained, result in versions:
        logged = mlflow.artifacts.load_text(f"runs:/{trained.mlflow_run_id}/card/model_card.html")
        bundle = export_bundle("card-model", result.version, store, signer, trusted_keys())
        assert (bundle / store_mod.CARD_HTML).read_text() == logged
        cards[result.version] = logged
    assert list(cards) == ["1", "2"]
    point(store, "1")

    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log") as server:
        with urllib.request.urlopen(f"{server.url}/model-card", timeout=10) as response:
            assert response.read().decode() == cards["1"]  # exactly what evaluate logged
        browser.get(server.url)
        browser.find_element(By.ID, "model-card").click()  # the form page's link
        wait_until(lambda: browser.current_url == f"{server.url}/model-card", timeout=15)
        assert shown(browser, "model-name") == "card-model" and shown(browser, "model-version") == "1"
        assert shown(browser, "gate") == "Promoted: no champion yet"
        rmse = f"{versions[0][1].metrics['rmse']:.4f}"
        assert f"rmse (gate) {rmse} -" in shown(browser, "metrics")  # no champion to compare with yet
        # The config's markup is shown as text, and never ran.
        assert shown(browser, "intended_use") == INTENDED
        assert browser.execute_script("return window.pwned") is None
        assert browser.find_elements(By.CSS_SELECTOR, "script") == []

        point(store, "2")  # the server swaps to v2: its card follows
        wait_until(lambda: get_json(f"{server.url}/version")["version"] == "2", timeout=30)

        def card_of_v2() -> bool:  # each worker follows the pointer on its own poll: the page may reach one still on v1
            browser.refresh()
            return shown(browser, "model-version") == "2"

        wait_until(card_of_v2, timeout=30)
        assert shown(browser, "gate").startswith("Not promoted: not better: rmse")
        assert "v1 (champion)" in shown(browser, "metrics") and rmse in shown(browser, "metrics")
        intended = browser.find_element(By.ID, "intended_use")
        assert intended.text == "Not filled in: set card.intended_use in config.yaml."
        assert "unfilled" in intended.get_attribute("class")
