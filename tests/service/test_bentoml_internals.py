"""The reaches into BentoML's private internals (service/bentoml_internals.py) still hold for the installed
BentoML; if an upgrade moves any of them, this fails and names which."""
from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import bentoml


def test_installed_bentoml_still_has_what_the_service_relies_on(client):
    from service import bentoml_internals
    from service.service import Generator

    app = client.app
    while not hasattr(app, "router") and hasattr(app, "app"):  # under the middleware stack
        app = app.app
    assert bentoml_internals.problems(app, "render_batch") == [], f"BentoML {bentoml.__version__}"
    assert Generator.apis["render_batch"].batchable


def test_a_lone_request_clears_the_batchers_learned_wait():
    """BentoML's dispatcher holds a request for company up to its learned `wait`; a lone one must not be held
    (the effect, 30 ms -> 7 ms p50 for one client after a burst, is measured in benchmarks/RESULTS.md)."""
    from types import SimpleNamespace

    from service.bentoml_internals import _batch_infer

    class Factory:
        def __init__(self):
            self.dispatchers = {"render_batch": SimpleNamespace(optimizer=SimpleNamespace(wait=0.03))}

        async def batch_infer(self, name, args, kwargs):
            return [f"{name}:{len(args[0])}"]

    factory = Factory()
    assert asyncio.run(_batch_infer(factory, "render_batch", ["item"], alone=False)) == ["render_batch:1"]
    assert factory.dispatchers["render_batch"].optimizer.wait == 0.03  # in company: BentoML decides
    assert asyncio.run(_batch_infer(factory, "render_batch", ["item"], alone=True)) == ["render_batch:1"]
    assert factory.dispatchers["render_batch"].optimizer.wait == 0


def test_client_errors_log_one_line_and_server_faults_keep_their_traceback(caplog):
    import pydantic

    from service import bentoml_internals

    bentoml_internals.brief_client_errors()
    log = logging.getLogger(bentoml_internals.EXCEPTION_LOGGER)
    try:
        pydantic.TypeAdapter(int).validate_python("x")
    except pydantic.ValidationError:
        with caplog.at_level(logging.INFO, logger=bentoml_internals.EXCEPTION_LOGGER):
            log.error("Exception on %s [%s]", "/generate", "POST", exc_info=True)
    try:
        raise bentoml.exceptions.NotFound("no job")
    except bentoml.exceptions.NotFound:
        with caplog.at_level(logging.INFO, logger=bentoml_internals.EXCEPTION_LOGGER):
            log.error("Exception on %s [%s]", "/augment/status", "POST", exc_info=True)
    try:
        raise bentoml.exceptions.ServiceUnavailable("overloaded")
    except bentoml.exceptions.ServiceUnavailable:
        with caplog.at_level(logging.INFO, logger=bentoml_internals.EXCEPTION_LOGGER):
            log.error("Exception on %s [%s]", "/generate", "POST", exc_info=True)
    try:
        raise RuntimeError("a real fault")
    except RuntimeError:
        with caplog.at_level(logging.INFO, logger=bentoml_internals.EXCEPTION_LOGGER):
            log.error("Exception on %s [%s]", "/generate", "POST", exc_info=True)
    brief, not_found, shed, fault = caplog.records[-4:]
    assert (shed.levelname, shed.exc_info) == ("INFO", None) and "overloaded" in shed.getMessage()
    assert (brief.levelname, brief.exc_info) == ("INFO", None) and "ValidationError" in brief.getMessage()
    assert (not_found.levelname, not_found.exc_info) == ("INFO", None) and "no job" in not_found.getMessage()
    assert fault.levelname == "ERROR" and fault.exc_info is not None
