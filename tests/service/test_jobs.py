"""Augmentation jobs in the service: submit/status/result/list over real HTTP, bad requests refused at
submit, a kill -9 and restart of the server between submit and fetch, and the job runner's rules
(failing with a reason, giving way to online requests)."""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import signal
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import augment
import models
from models.checkpoint import file_hash
from service.testing import Server
from tests.service.conftest import ROOT, decode

JOB_ID = r"^\d{8}-\d{6}-[0-9a-f]{8}$"


def wait_for(http, job_id: str, until=lambda s: s["state"] in ("done", "failed"), timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = http.post("/augment/status", json={"job_id": job_id})
        assert r.status_code == 200, r.text
        status = r.json()
        if until(status):
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout} s"
        time.sleep(0.1)


def wait_done(jobs, job_id: str, timeout: float = 120) -> None:
    """Poll an in-process JobManager until the job is done (fails the test after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while jobs.status(job_id)["state"] != "done":
        assert time.monotonic() < deadline, f"job {job_id} not done after {timeout} s"
        time.sleep(0.05)


def reference_tree(spec: dict, checkpoint: Path, folder: Path) -> dict[str, bytes]:
    """What `augment` makes from the job's own spec and the checkpoint on disk (the CLI's path)."""
    job = augment.AugmentJob.from_dict(spec)
    augment.run(job, folder, augment.checkpoint_renderer(checkpoint, job.truncation, "cpu"))
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def job_count(http) -> int:
    r = http.post("/augment/list")
    assert r.status_code == 200, r.text
    return len(r.json()["jobs"])


# --- over real HTTP (the shared test server) ----------------------------------------------------------------

def test_imagefolder_job_over_http(server, checkpoints, tmp_path):
    r = server.http.post("/augment/submit", json={"per_class": {"sneaker": 5, "bag": 3}, "seed": 1})
    assert r.status_code == 200, r.text
    sub = r.json()
    assert sub["state"] in ("queued", "running") and sub["total"] == 8
    assert sub["per_class"] == {"Sneaker": 5, "Bag": 3} and sub["model"] == "tiny-cgan" and sub["seed"] == 1
    assert sub["checkpoint_sha256"] == file_hash(checkpoints["tiny-cgan"])
    assert re.match(JOB_ID, sub["job_id"])
    status = wait_for(server.http, sub["job_id"])
    assert (status["state"], status["done"], status["progress"], status["error"]) == ("done", 8, 1.0, None)
    r = server.http.post("/augment/result", json={"job_id": sub["job_id"]})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "application/zip"
    assert f"augment-{sub['job_id']}.zip" in r.headers["content-disposition"]
    files = unzip(r.content)
    assert sorted(n.split("/")[0] for n in files if n.endswith(".png")) == ["7_Sneaker"] * 5 + ["8_Bag"] * 3
    spec = json.loads(files["ganforge-augment.json"])
    assert files == reference_tree(spec, checkpoints["tiny-cgan"], tmp_path / "ref")  # the CLI's bytes
    rows = list(csv.DictReader(io.StringIO(files["manifest.csv"].decode())))
    assert [(r["class_name"], int(r["seed"])) for r in rows] == [("Sneaker", 1 + k) for k in range(5)] + \
        [("Bag", 6 + k) for k in range(3)]
    # image k of the job is /generate's image for its class and seed (up to batch-composition rounding)
    online = server.http.post("/generate", json={"class_name": "bag", "n": 1, "seed": 6})
    alone = decode(base64.b64decode(online.json()["images"][0]["png"]))
    diff = np.abs(decode(files[rows[5]["file"]]).astype(int) - alone.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01


def test_npz_job_and_list_over_http(server, checkpoints, tmp_path):
    r = server.http.post("/augment/submit", json={"total": 12, "seed": 3, "format": "npz"})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    assert wait_for(server.http, job_id)["state"] == "done"
    r = server.http.post("/augment/result", json={"job_id": job_id})
    assert r.status_code == 200 and f"augment-{job_id}.npz" in r.headers["content-disposition"]
    got = np.load(io.BytesIO(r.content))
    assert np.bincount(got["labels"], minlength=10).tolist() == [2, 2] + [1] * 8
    assert got["seeds"].tolist() == list(range(3, 15)) and got["class_names"][7] == "Sneaker"
    folder = ROOT / "jobs-server" / job_id
    assert not (folder / "out").exists()  # removed once published (issue 16.15): the result holds the images
    spec = json.loads((folder / "job.json").read_text())["job"]
    assert r.content == reference_tree(spec, checkpoints["tiny-cgan"], tmp_path / "ref")["images.npz"]
    jobs = server.http.post("/augment/list").json()["jobs"]
    assert jobs[0]["job_id"] == job_id and all(j["state"] in ("done", "cancelled", "failed") for j in jobs)
    assert [j["job_id"] for j in jobs] == sorted((j["job_id"] for j in jobs), reverse=True)


@pytest.mark.parametrize("body,message", [
    ({"per_class": {"unicorn": 5}}, "Sneaker"),  # unknown class: the valid ones are listed
    ({"per_class": 5, "model": "nope"}, "tiny-cgan"),  # unknown model: the valid ones are listed
    ({"per_class": 5, "model": "tiny-i2i"}, "unknown conditional model"),
    ({"per_class": 5, "total": 10}, "exactly one"),
    ({"seed": 1}, "exactly one"),
    ({"per_class": 20_000}, "limit is 100000"),  # 10 classes x 20000 > GANFORGE_JOB_MAX_IMAGES
    ({"per_class": 100_001}, "less than or equal"),
    ({"total": 0}, "greater than or equal"),
    ({"per_class": {"bag": -1}}, "greater than or equal"),
    ({"per_class": {"bag": 1, "Bag": 2}}, "twice"),
    ({"per_class": {}}, "at least 1"),
    ({"per_class": "5"}, "per_class"),  # strict: a string is not a count
    ({"per_class": 5, "format": "tar"}, "imagefolder"),
    ({"per_class": 5, "colour": "red"}, "colour"),
    ({"per_class": 5, "seed": 2**63 - 2}, "seed"),
    ({"per_class": {"bag": 2}, "classes": ["bag"]}, "classes"),
])
def test_bad_job_requests_are_refused_at_submit(server, body, message):
    before = job_count(server.http)
    r = server.http.post("/augment/submit", json=body)
    assert r.status_code == 400, (r.status_code, r.text)
    assert message in r.text and "Traceback" not in r.text
    assert job_count(server.http) == before  # nothing was queued


@pytest.mark.parametrize("route,body,status", [
    ("/augment/status", {"job_id": "20990101-000000-00000000"}, 404),
    ("/augment/result", {"job_id": "20990101-000000-00000000"}, 404),
    ("/augment/status", {"job_id": "../../etc/passwd"}, 400),
    ("/augment/result", {}, 400),
])
def test_unknown_or_malformed_job_ids(server, route, body, status):
    r = server.http.post(route, json=body)
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text


# --- restart between submit and fetch -----------------------------------------------------------------------

def kill_9(server: Server) -> None:
    """SIGKILL the server and its workers (which run in sessions of their own, out of its process group)."""
    import psutil

    children = psutil.Process(server.proc.pid).children(recursive=True)
    os.kill(server.proc.pid, signal.SIGKILL)  # first, so that nothing respawns the workers
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    server.proc.wait()
    psutil.wait_procs(children, timeout=30)


def test_jobs_survive_a_kill_9_and_restart_of_the_server(server_env, checkpoints, tmp_path):
    """Finished results stay fetchable, the interrupted job resumes where its chunks end and gives the
    bytes of an uninterrupted run, the queued one runs; limits answer 400 / 429 meanwhile."""
    home = ROOT / "bentoml-jobs"
    shutil.copytree(ROOT / "bentoml" / "models", home / "models")  # own home, as in test_http
    env = {**server_env, "BENTOML_HOME": str(home), "GANFORGE_JOBS_DIR": str(tmp_path / "jobs"),
           "GANFORGE_JOB_BATCH_SIZE": "2", "GANFORGE_JOB_CHUNK_SIZE": "4", "GANFORGE_JOB_MAX_IMAGES": "100",
           "GANFORGE_JOB_MAX_ACTIVE": "2"}
    a = Server({**env, "GANFORGE_JOB_PAUSE_MS": "300"}, tmp_path / "a.log")  # slow jobs: killable mid-way
    try:
        small = a.http.post("/augment/submit", json={"per_class": {"bag": 3}, "seed": 5, "format": "npz"}).json()
        assert wait_for(a.http, small["job_id"])["state"] == "done"
        big = a.http.post("/augment/submit", json={"total": 60, "seed": 2}).json()
        queued = a.http.post("/augment/submit", json={"per_class": 1, "seed": 70}).json()
        assert queued["state"] in ("queued", "running")
        r = a.http.post("/augment/submit", json={"per_class": 1})
        assert r.status_code == 429 and "GANFORGE_JOB_MAX_ACTIVE" in r.text  # 2 pending already
        r = a.http.post("/augment/submit", json={"per_class": 11})
        assert r.status_code == 400 and "limit is 100" in r.text
        r = a.http.post("/augment/result", json={"job_id": big["job_id"]})
        assert r.status_code == 409 and "poll" in r.text
        wait_for(a.http, big["job_id"], until=lambda s: s["done"] >= 8, timeout=120)
        online = a.http.post("/generate", json={"class_name": 3, "n": 2, "seed": 0})  # served while a job runs
        assert online.status_code == 200
        kill_9(a)  # no shutdown hook runs: the job folder still says "running"
    finally:
        a.close()
    on_disk = json.loads((tmp_path / "jobs" / big["job_id"] / "state.json").read_text())
    assert on_disk["state"] == "running"
    assert augment.completed(tmp_path / "jobs" / big["job_id"] / "out",
                             augment.AugmentJob.from_dict(json.loads(
                                 (tmp_path / "jobs" / big["job_id"] / "job.json").read_text())["job"])) < 60

    b = Server(env, tmp_path / "b.log")
    try:
        r = b.http.post("/augment/result", json={"job_id": small["job_id"]})  # finished before the restart
        assert r.status_code == 200
        assert np.load(io.BytesIO(r.content))["seeds"].tolist() == [5, 6, 7]
        status = wait_for(b.http, big["job_id"])
        assert (status["state"], status["done"], status["interruptions"], status["attempts"]) == ("done", 60, 1, 2)
        r = b.http.post("/augment/result", json={"job_id": big["job_id"]})
        assert r.status_code == 200
        files = unzip(r.content)
        assert len([n for n in files if n.endswith(".png")]) == 60
        assert files == reference_tree(json.loads(files["ganforge-augment.json"]), checkpoints["tiny-cgan"],
                                       tmp_path / "ref")
        assert wait_for(b.http, queued["job_id"])["state"] == "done"
        assert {j["job_id"] for j in b.http.post("/augment/list").json()["jobs"]} == \
            {small["job_id"], big["job_id"], queued["job_id"]}
    finally:
        b.close()


# --- the runner's rules, in-process -------------------------------------------------------------------------

@pytest.fixture
def served(checkpoints):
    from backends import choose
    from service.served import Served

    G, meta = models.load(checkpoints["tiny-cgan"])
    return Served(name="tiny-cgan", tag="tiny-cgan:test", module=G, meta=meta, device=torch.device("cpu"),
                  backend=choose(G, meta, "cpu", "torch"),
                  store_metadata={"sha256": file_hash(checkpoints["tiny-cgan"])})


def small_job(served, **changes) -> augment.AugmentJob:
    fields = dict(checkpoint_sha256=served.store_metadata["sha256"], class_names=served.meta["class_names"],
                  counts=[2] * 10, seed=0, chunk_size=4, batch_size=2, model="tiny-cgan")
    return augment.AugmentJob(**{**fields, **changes})


def test_a_job_that_cannot_run_fails_with_a_reason(served, tmp_path):
    from service.jobs import JobManager
    from service.gate import OnlineGate

    jobs = JobManager(tmp_path, {"tiny-cgan": served}, OnlineGate(), poll_s=0.05)
    gone = jobs.submit(small_job(served, model="retired"), "retired:1")["job_id"]
    other = jobs.submit(small_job(served, checkpoint_sha256="0" * 64), "tiny-cgan:old")["job_id"]
    fine = jobs.submit(small_job(served), "tiny-cgan:test")["job_id"]
    with jobs:
        wait_done(jobs, fine)
    assert jobs.status(gone)["state"] == "failed" and "not served any more" in jobs.status(gone)["error"]
    assert jobs.status(other)["state"] == "failed" and "other weights" in jobs.status(other)["error"]
    from service.jobs import JobNotReady
    with pytest.raises(JobNotReady, match="not served any more"):
        jobs.result(gone)
    assert jobs.result(fine).name == f"augment-{fine}.zip"


def test_jobs_give_way_to_online_requests(served, tmp_path):
    """While an online request is in flight, the job starts no forward pass (up to its maximum wait)."""
    from service.jobs import JobManager
    from service.gate import OnlineGate

    gate = OnlineGate()
    jobs = JobManager(tmp_path, {"tiny-cgan": served}, gate, batch_wait_s=60, poll_s=0.05)
    job_id = jobs.submit(small_job(served), "tiny-cgan:test")["job_id"]
    release = threading.Event()

    def online_request() -> None:
        with gate.online():
            release.wait(30)

    t = threading.Thread(target=online_request)
    t.start()
    while not gate.active:
        time.sleep(0.01)
    images0 = served.images
    jobs.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert served.images == images0, "the job rendered while an online request was in flight"
            time.sleep(0.05)
        assert jobs.status(job_id)["state"] == "running"
        release.set()
        t.join()
        wait_done(jobs, job_id)
    finally:
        release.set()
        jobs.stop()
    assert served.images - images0 == 20


def test_gate_waits_a_quiet_period_after_the_last_online_request():
    """A job batch does not start in the few-ms gap between one client's back-to-back requests."""
    from service.gate import OnlineGate

    gate = OnlineGate(quiet_s=0.3)
    assert gate.wait_idle(0)  # never any traffic: idle at once
    with gate.online():
        assert not gate.wait_idle(0.05)  # a request in flight
    assert not gate.wait_idle(0.05)  # just ended: still inside the quiet period
    t = time.monotonic()
    assert gate.wait_idle(5)
    assert time.monotonic() - t >= 0.2  # returned only once the quiet period (0.3 s from the end) was over


def test_jobs_still_progress_when_online_traffic_never_stops(served, tmp_path):
    """The wait is bounded (GANFORGE_JOB_MAX_WAIT_MS): a saturated server still finishes its jobs."""
    from service.jobs import JobManager
    from service.gate import OnlineGate

    gate = OnlineGate()
    jobs = JobManager(tmp_path, {"tiny-cgan": served}, gate, batch_wait_s=0.05, poll_s=0.05)
    with gate.online():
        job_id = jobs.submit(small_job(served), "tiny-cgan:test")["job_id"]
        with jobs:
            wait_done(jobs, job_id)
