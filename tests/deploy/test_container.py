"""deploy/container_check.sh for real: the Bento's image built on a local Debian base, run, and called over
loopback HTTP (/readyz, /models, /generate, /generate_image, /translate, an augmentation job). Minutes and
gigabytes: `slow`, run with `make test-slow` as root on a machine with Debian's podman (or apt to install it)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT


@pytest.mark.slow
def test_the_container_builds_runs_and_answers(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("deploy/container_check.sh needs root (podman's rootful storage, mmdebstrap)")
    work = Path(os.environ.get("GANFORGE_CONTAINER_WORK", "/var/tmp/ganforge-container"))
    env = {**os.environ, "GANFORGE_CONTAINER_WORK": str(work), "PORT": "3927"}
    result = subprocess.run(["bash", str(PROJECT_ROOT / "deploy" / "container_check.sh")], cwd=PROJECT_ROOT,
                            env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((work / "report.json").read_text())
    assert report["ok"] and set(report["checks"]) == {"readyz", "models", "generate", "generate_image",
                                                      "translate", "augment_job"}
    assert all(check["ok"] for check in report["checks"].values()), report["checks"]
    assert report["image_size_bytes"] > 0 and report["cold_start_s"] > 0
    assert {m["kind"] for m in report["checks"]["models"]["served"].values()} == {"conditional", "image-to-image"}
