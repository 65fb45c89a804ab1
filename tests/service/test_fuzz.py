"""Schema-driven fuzzing of the real server from its own /docs.json (schemathesis): no server error, and every
response (status, media type, body, headers) is one the document declares. Valid (positive) and invalid
(negative) requests are generated from the schema for every operation, job submissions with class names and
per-class dicts among them.

The default run is bounded (FUZZ_EXAMPLES per operation and mode); `-m slow` runs SLOW_EXAMPLES.
(schemathesis's own pytest plugin fails under pytest 9 - `Function` has no `_nodeid` - so the operations are
driven through Hypothesis directly.)"""
from __future__ import annotations

import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

FUZZ_EXAMPLES = 8
SLOW_EXAMPLES = 250
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


def fuzz(url: str, examples: int) -> collections.Counter:
    """Run every operation of the server's document with `examples` cases per generation mode; returns the
    count of requests per (operation, status). A failed check raises (the test fails with schemathesis's
    report: the request, the response and what it violated)."""
    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    schema.config.update(base_url=url)
    sent: collections.Counter = collections.Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                response = case.call_and_validate(checks=CHECKS, timeout=60)
                sent[(f"{case.method} {case.path}", response.status_code)] += 1

            try:
                run()
            except Unsatisfiable:  # nothing to get wrong (a GET with no parameters): no negative case
                if mode is not GenerationMode.NEGATIVE:
                    raise
    return sent


def _report(sent: collections.Counter) -> str:
    per_status = collections.Counter()
    for (_, status), n in sent.items():
        per_status[status] += n
    return f"{sum(sent.values())} requests, by status {dict(sorted(per_status.items()))}"


@pytest.fixture(scope="module")
def fuzz_server(server_env):
    """Its own server: small job limits, so that fuzzed job submissions (created, and refused with 429) do not
    leave 100,000-image jobs running behind the other tests, and its own jobs folder."""
    import shutil

    from service.testing import Server
    from tests.service.conftest import ROOT

    home = ROOT / "bentoml-fuzz"
    shutil.copytree(ROOT / "bentoml" / "models", home / "models", dirs_exist_ok=True)
    s = Server({**server_env, "BENTOML_HOME": str(home), "GANFORGE_JOB_MAX_IMAGES": "64",
                "GANFORGE_JOB_MAX_ACTIVE": "3", "GANFORGE_JOBS_DIR": str(ROOT / "jobs-fuzz")}, ROOT / "fuzz.log")
    yield s
    s.close()


def test_fuzz(fuzz_server):
    sent = fuzz(fuzz_server.url, FUZZ_EXAMPLES)
    print(_report(sent))
    assert sum(sent.values()) >= 50
    assert any(op == "POST /augment/submit" and status == 200 for op, status in sent)  # jobs were created
    assert not any(status >= 500 for _, status in sent)


@pytest.mark.slow
def test_fuzz_long(fuzz_server):
    sent = fuzz(fuzz_server.url, SLOW_EXAMPLES)
    print(_report(sent))
    assert not any(status >= 500 for _, status in sent)
