"""Sample selection through /augment/submit (the in-process app): a classifier from the model store filters the
job, its result holds the selection report and passes the threshold, and bad selection fields answer 400
naming the field."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

import augment
import models
from augment.select import classifier_scorer
from tests.augment.test_select import save_tiny_classifier
from tests.service.conftest import FASHION, ROOT, decode
from tests.service.test_jobs import unzip, wait_for


@pytest.fixture(scope="module")
def classifiers(store) -> dict[str, str]:
    """Two tiny classifiers in the store: one with the generator's classes, one with digits."""
    from service.store import export

    folder = ROOT / "classifiers"
    return {name: export(save_tiny_classifier(folder / name, classes), name)[0]
            for name, classes in (("tiny-classifier", FASHION), ("digits", [str(i) for i in range(10)]))}


def test_a_filtered_job_over_the_app(client, classifiers, checkpoints):
    body = {"per_class": {"bag": 3, "coat": 2}, "seed": 4,
            "selection": {"classifier": "tiny-classifier", "min_confidence": 0.05, "max_draw_factor": 50}}
    r = client.post("/augment/submit", json=body)
    assert r.status_code == 200, r.text
    status = wait_for(client, r.json()["job_id"])
    assert status["state"] == "done", status
    files = unzip(client.post("/augment/result", json={"job_id": status["job_id"]}).content)
    rows = list(csv.DictReader(io.StringIO(files["manifest.csv"].decode())))
    assert list(rows[0]) == [*augment.MANIFEST_COLUMNS, *augment.SELECTION_COLUMNS] and len(rows) == 5
    summary = json.loads(files[augment.SELECTION_NAME])
    assert summary["selection"]["classifier"] == "tiny-classifier" and summary["total"]["accepted"] == 5
    assert augment.REJECTED_NAME in files
    clf, meta = models.load(ROOT / "classifiers" / "tiny-classifier")
    images = np.stack([decode(files[r["file"]]) for r in rows])
    p = classifier_scorer(clf, meta)(images, np.array([int(r["class_index"]) for r in rows]))
    assert (p >= 0.05 - 1e-5).all()


@pytest.mark.parametrize("change,field,message", [
    ({"min_confidence": 0.9}, "classifier", "min_confidence needs `classifier`"),
    ({"classifier": "tiny-classifier"}, "min_confidence", "filters with min_confidence"),
    ({"classifier": "nobody", "min_confidence": 0.9}, "classifier", "no model 'nobody' in the BentoML model store"),
    ({"classifier": "digits", "min_confidence": 0.9}, "classifier", "['0', '1', '2'"),
    ({"classifier": "Bad Name/..", "min_confidence": 0.9}, "classifier", "not a valid BentoML model name"),
    ({"classifier": "tiny-classifier", "min_confidence": 1.5}, "min_confidence", "less than or equal to 1"),
    ({"d_keep_fraction": 0.5}, "d_keep_fraction", "exported without its discriminator"),
    ({"max_draw_factor": 5}, "max_draw_factor", "goes with a filter"),
    ({"classifier": "tiny-classifier", "min_confidence": 0.5, "max_draw_factor": 0}, "max_draw_factor",
     "greater than or equal to 1"),
])
def test_bad_selection_fields_answer_400_naming_the_field(client, classifiers, change, field, message):
    r = client.post("/augment/submit", json={"per_class": 2, "seed": 0, "selection": change})
    assert r.status_code == 400, (r.status_code, r.text)
    assert message in r.text and "Traceback" not in r.text
    assert ["selection", field] in [d["loc"][-2:] for d in r.json()["detail"]], r.json()
    if "digits" in change.values():  # both class lists are named
        assert "'T-shirt/top'" in r.text


def test_an_empty_selection_is_no_selection(client):
    r = client.post("/augment/submit", json={"per_class": {"bag": 1}, "seed": 0, "selection": {}})
    assert r.status_code == 200, r.text
    assert wait_for(client, r.json()["job_id"])["state"] == "done"
