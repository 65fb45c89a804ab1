"""`ganforge export` into the BentoML model store, settings from the environment, and `bentoml build`
(which packs `service/`, `models/` and `augment/`, never `training/`)."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import PROJECT_ROOT
from tests.service.conftest import ROOT


def test_export_cli_is_idempotent_and_versions_new_weights(checkpoints, store, capsys):
    import bentoml

    from training.cli import main

    assert main(["export", str(checkpoints["tiny-cgan"]), "--name", "tiny-cgan"]) == 0
    assert "already holds these weights" in capsys.readouterr().out
    assert main(["export", str(checkpoints["tiny-cgan"]), "--name", "cli-copy"]) == 0
    assert "exported" in capsys.readouterr().out
    stored = bentoml.models.get("cli-copy:latest")
    assert stored.info.labels["kind"] == "conditional"
    assert stored.info.metadata["class_names"][7] == "Sneaker"
    assert stored.info.metadata["provenance"]["steps"] == 0
    assert os.path.isfile(os.path.join(stored.path, "model.safetensors"))
    versions = {m.tag.version for m in bentoml.models.list("cli-copy")}
    assert main(["export", str(checkpoints["tiny-cgan"]), "--name", "cli-copy", "--force"]) == 0
    assert len({m.tag.version for m in bentoml.models.list("cli-copy")} - versions) == 1


def test_export_refuses_what_cannot_be_served(tmp_path, capsys):
    import models
    from models.classifier import DomainClassifier, DomainClassifierConfig
    from training.cli import main

    from models.conditional import ProjectionDiscriminator, ProjectionDiscriminatorConfig

    clf = tmp_path / "clf"
    models.save(DomainClassifier(DomainClassifierConfig(num_classes=3, img_resolution=16, width=4, feature_dim=8)),
                clf, {"kind": "classifier", "class_names": ["a", "b", "c"]})
    assert main(["export", str(clf), "--name", "clf"]) == 0  # stored (not served) for jobs' classifier filter
    d = tmp_path / "d"  # a discriminator goes into the store only beside its generator
    models.save(ProjectionDiscriminator(ProjectionDiscriminatorConfig(num_classes=3, img_resolution=16,
                                                                      base_channels=4)),
                d, {"kind": "discriminator", "class_names": ["a", "b", "c"]})
    capsys.readouterr()
    assert main(["export", str(d), "--name", "d"]) == 2
    assert "'discriminator' checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--name", "x"]) == 2
    assert main(["export", str(clf), "--name", "Bad Name"]) == 2
    assert "not a valid BentoML model name" in capsys.readouterr().err


@pytest.mark.parametrize("env,message", [
    ({"GANFORGE_MAX_N": "zero"}, "GANFORGE_MAX_N"),
    ({"GANFORGE_MAX_BATCH_SIZE": "1"}, "GANFORGE_MAX_BATCH_SIZE"),
    ({"GANFORGE_BATCHING": "maybe"}, "GANFORGE_BATCHING"),
    ({"GANFORGE_DTYPE": "float8"}, "GANFORGE_DTYPE"),
    ({"GANFORGE_BACKEND": "tensorrt"}, r"GANFORGE_BACKEND='tensorrt'; allowed: \['auto', 'torch', 'torch-autocast'"),
    ({"GANFORGE_MODELS": "a,a"}, "twice"),
    ({"GANFORGE_MODELS": "UPPER"}, "not a valid BentoML model name"),
])
def test_settings_errors_name_the_variable(env, message):
    from service.config import Settings

    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_settings_defaults_and_overrides():
    from service.config import BUNDLED_MODELS, Settings

    assert Settings.from_env({}).models == BUNDLED_MODELS
    s = Settings.from_env({"GANFORGE_MODELS": " a , b.c ", "GANFORGE_MAX_BATCH_SIZE": "16", "GANFORGE_BATCHING": "OFF"})
    assert (s.models, s.max_batch_size, s.batching) == (("a", "b.c"), 16, False)


def test_bentoml_build_packs_service_models_requirements_and_dockerfile(store):
    """`bentoml build` offline into the test BENTOML_HOME, then what a container build would get."""
    import bentoml

    env = {**os.environ, "GANFORGE_MODELS": "tiny-cgan,tiny-i2i"}
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = bentoml.bentos.get(tag)
    root = bento.path
    files = {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}
    assert {"src/service/service.py", "src/service/schemas.py", "src/models/sampling.py",
            "src/models/checkpoint.py", "src/augment/__init__.py", "src/augment/spec.py", "src/augment/writer.py",
            "src/augment/render.py", "src/backends/select.py",
            "src/backends/export.py", "env/docker/Dockerfile", "env/python/requirements.txt",
            "apis/openapi.yaml", "bento.yaml"} <= files
    assert not any(f.startswith(("src/training", "src/tests", "src/checkpoints", "src/runs", "src/benchmarks",
                                 "src/service/testing.py")) for f in files)
    requirements = open(bento.path_of("env/python/requirements.txt")).read()
    for package in ("torch==", "bentoml==", "safetensors", "pillow", "pydantic", "numpy", "uvloop==", "httptools==",
                    "onnx==", "onnxruntime=="):
        assert package in requirements, requirements
    assert "torchvision" not in requirements and "tensorboard" not in requirements
    packed = {str(m.tag) for m in bento.info.all_models}
    assert packed == {store["tiny-cgan"], store["tiny-i2i"]}

    # The Dockerfile `bentoml containerize` would build (no Docker engine here: generated, not run).
    dockerfile = ROOT / "Dockerfile"
    bentoml.container.get_containerfile(tag, output_path=str(dockerfile))
    text = dockerfile.read_text()
    assert "FROM python:3.11" in text and "requirements.txt" in text and "EXPOSE 3000" in text

    # `bentoml export` (what containerize and BentoCloud receive) carries the model weights.
    archive = bentoml.bentos.export_bento(tag, str(ROOT / "ganforge.bento"))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    for name, stored in store.items():
        version = stored.split(":")[1]
        assert any(n.endswith(f"models/{name}/{version}/model.safetensors") for n in names), names


def test_make_serve_binds_localhost_by_default():
    """Issue 16: `make serve` bound 0.0.0.0 while the docs said localhost."""
    import shutil
    import subprocess

    from tests.conftest import PROJECT_ROOT

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    dry = subprocess.run(["make", "-n", "serve", "SERVED=tiny"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    command = next(line for line in dry.stdout.splitlines() if "bentoml serve" in line)
    assert "--host 127.0.0.1 " in command
    exposed = subprocess.run(["make", "-n", "serve", "SERVED=tiny", "HOST=0.0.0.0"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True).stdout
    assert "--host 0.0.0.0 " in exposed
