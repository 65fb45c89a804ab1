"""/docs.json describes what the service really sends: real responses of every route, success and each error
status, validated against the published document (issue 16: `detail` published as a string, 404/409/429 as
objects while arrays were sent, nullable fields as non-nullable, statuses undeclared)."""
from __future__ import annotations

import time

import jsonschema_rs
import numpy as np
import pytest

from tests.service.conftest import png


@pytest.fixture(scope="module")
def doc(server):
    r = server.http.get("/docs.json")
    assert r.status_code == 200
    return r.json()


def conforms(doc: dict, path: str, response) -> None:
    """The response's status, media type and (JSON) body are the ones `doc` publishes for `path`."""
    op = doc["paths"][path]["post"]
    declared = op["responses"].get(str(response.status_code))
    assert declared, f"{path} answered {response.status_code}, which it does not declare: {response.text[:300]}"
    media = response.headers["content-type"].split(";")[0].strip()
    assert media in declared["content"], \
        f"{path} {response.status_code} sent {media}; declared {list(declared['content'])}"
    schema = declared["content"][media]["schema"]
    if media == "application/json":
        validator = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
        errors = [e.message for e in validator.iter_errors(response.json())]
        assert not errors, f"{path} {response.status_code}: {errors[:5]} in {response.text[:500]}"
    for header in declared.get("headers", {}):
        assert header.lower() in response.headers, f"{path} {response.status_code} lacks header {header}"


def test_the_document_is_the_projects(doc):
    assert doc["openapi"] == "3.1.0"
    info = doc["info"]
    assert info["title"] == "ganforge" and info["version"] not in ("None", "", None)
    assert "BentoML" not in info["description"] and "seed" in info["description"]
    assert not any(p.startswith("/internal") for p in doc["paths"])
    assert "root_input" not in str(doc)
    schemas = doc["components"]["schemas"]
    class_name = schemas["GenerateRequest"]["properties"]["class_name"]["anyOf"]
    assert {s["type"] for s in class_name} == {"integer", "string"}
    per_class = schemas["AugmentRequest"]["properties"]["per_class"]["anyOf"]
    assert {s.get("type") for s in per_class} == {"integer", "object", "null"}
    for field in ("started", "finished", "error", "note", "result", "result_bytes", "truncation"):
        assert {"type": "null"} in schemas["JobStatus"]["properties"][field]["anyOf"], field


def test_image_routes_conform(server, doc):
    h = server.http
    cases = [
        ("/generate", h.post("/generate", json={"class_name": "sneaker", "n": 2, "seed": 1})),
        ("/generate", h.post("/generate", json={"class_name": 2})),  # truncation null, seed picked
        ("/generate", h.post("/generate", json={"class_name": "unicorn"})),
        ("/generate", h.post("/generate", json={"class_name": 1, "colour": "red"})),
        ("/generate", h.post("/generate", content=b"x" * 100_000, headers={"content-type": "application/json"})),
        ("/generate", h.post("/generate", content=b"{}", headers={"content-type": "text/plain"})),
        ("/generate_image", h.post("/generate_image", json={"class_name": "bag", "n": 4})),
        ("/generate_image", h.post("/generate_image", json={"class_name": "bag", "scale": 99})),
        ("/translate", h.post("/translate", files={"image": ("x.png", png(np.zeros((20, 20), np.uint8)))})),
        ("/translate", h.post("/translate", files={"image": ("x.png", b"not an image")})),
        ("/translate", h.post("/translate", json={"image": "x"})),
        ("/models", h.post("/models")),
    ]
    statuses = {}
    for path, response in cases:
        conforms(doc, path, response)
        statuses.setdefault(path, set()).add(response.status_code)
    assert statuses == {"/generate": {200, 400, 413, 415}, "/generate_image": {200, 400},
                        "/translate": {200, 400, 415}, "/models": {200}}


def test_job_routes_conform(server, doc):
    h = server.http
    unknown = {"job_id": "20260101-000000-00000000"}
    small = h.post("/augment/submit", json={"total": 4, "seed": 2})
    big = h.post("/augment/submit", json={"total": 5000, "seed": 3})
    cases = [("/augment/submit", small), ("/augment/submit", big),
             ("/augment/submit", h.post("/augment/submit", json={"per_class": {"unicorn": 1}})),
             ("/augment/result", h.post("/augment/result", json={"job_id": big.json()["job_id"]})),  # 409
             ("/augment/delete", h.post("/augment/delete", json={"job_id": big.json()["job_id"]})),  # 409
             ("/augment/cancel", h.post("/augment/cancel", json={"job_id": big.json()["job_id"]}))]
    for route in ("/augment/status", "/augment/result", "/augment/cancel", "/augment/retry", "/augment/delete"):
        cases.append((route, h.post(route, json=unknown)))
        cases.append((route, h.post(route, json={"job_id": "x"})))
    job_id = small.json()["job_id"]
    deadline = time.monotonic() + 120
    while (status := h.post("/augment/status", json={"job_id": job_id})).json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cases += [("/augment/status", status),
              ("/augment/result", h.post("/augment/result", json={"job_id": job_id})),
              ("/augment/result", h.post("/augment/result", json={"job_id": job_id}, headers={"range": "bytes=0-9"})),
              ("/augment/result", h.post("/augment/result", json={"job_id": job_id},
                                         headers={"range": "bytes=99999999-"})),
              ("/augment/retry", h.post("/augment/retry", json={"job_id": job_id})),  # done: 409
              ("/augment/list", h.post("/augment/list")),
              ("/augment/list", h.post("/augment/list", json={"limit": 2})),
              ("/augment/list", h.post("/augment/list", json={"limit": -1})),
              ("/augment/delete", h.post("/augment/delete", json={"job_id": job_id}))]
    seen = {}
    for path, response in cases:
        conforms(doc, path, response)
        seen.setdefault(path, set()).add(response.status_code)
    assert seen["/augment/result"] == {200, 206, 400, 404, 409, 416}
    assert seen["/augment/submit"] == {200, 400} and seen["/augment/delete"] == {200, 400, 404, 409}


def test_in_process_only_statuses_conform(client, monkeypatch):
    """507 (full jobs disk) and 429 (too many jobs) are produced in process, where they can be forced."""
    import service.jobs
    from service.openapi import document
    from service.service import KINDS_SERVED

    doc = document(KINDS_SERVED)

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.jobs, "_write_json", full)
    conforms(doc, "/augment/submit", client.post("/augment/submit", json={"total": 3}))
    monkeypatch.undo()
    monkeypatch.setattr(service.jobs.JobManager, "_pending", lambda self: ["x"] * 10_000)
    r = client.post("/augment/submit", json={"total": 3})
    assert r.status_code == 429
    conforms(doc, "/augment/submit", r)


def test_every_api_route_is_published_and_nothing_else(store):
    """The document's route table (service/openapi.py) and the service's APIs cannot drift apart."""
    from service.openapi import document
    from service.service import Generator

    published = {p for p, ops in document()["paths"].items() if "post" in ops}
    served = {api.route for api in Generator.apis.values() if not api.route.startswith("/internal/")}
    assert published == served
