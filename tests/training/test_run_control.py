"""One process: stopping on a signal with a resume state, `resume: auto`, and what TensorBoard and the bar show."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.training.helpers import tiny_run, train_tiny
from tests.training.multiproc import PROJECT_ROOT
from training.telemetry import Throughput, purge_step

RUN = {"batch_size": 8, "device": "cpu", "log_every": 2, "sample_every": 2, "state_every": 4}


def scalars(run, tag="loss/d"):
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc, [e.step for e in acc.Scalars(tag)]


def test_tensorboard_keeps_the_resume_steps_point_and_shows_config_and_samples(tmp_path):
    train_tiny(tmp_path, steps=4, **RUN)  # logs at 2, 4; resume state at 4
    train_tiny(tmp_path, resume=True, steps=8, **RUN)  # logs at 6, 8
    acc, steps = scalars(tmp_path / "run")
    assert steps == [2, 4, 6, 8]  # purge_step=4 (the old behaviour) dropped the point at 4
    assert [e.step for e in acc.Images("samples")] == [2, 4, 6, 8]
    config = acc.Tensors("config/text_summary")
    assert "batch_size: 8" in config[0].tensor_proto.string_val[0].decode()
    assert [e.step for e in acc.Scalars("speed/images_per_s")] == [2, 4, 6, 8]


def test_purge_step_drops_only_what_the_resumed_run_logs_again():
    assert purge_step(400, resumed=True) == 401 and purge_step(0, resumed=False) == 0


def test_throughput_is_images_of_the_global_batch_per_second_over_the_last_interval():
    meter = Throughput(step=0, batch_size=64, now=0.0)
    assert meter.reading(10, now=5.0) == (128.0, 2.0)  # 10 steps x 64 images in 5 s
    assert meter.reading(20, now=15.0) == (64.0, 1.0)  # the last interval only, not the run's average


def test_resume_auto_starts_fresh_then_continues(tmp_path, capsys):
    first = train_tiny(tmp_path, steps=2, resume="auto", **RUN)  # no state yet: a fresh run
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 2
    train_tiny(tmp_path, steps=4, resume="auto", **RUN)
    assert "at step 2" in capsys.readouterr().err
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 4 and first.exists()


def test_bad_resume_and_batchnorm_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="resume must be one of .*'auto'"):
        train_tiny(tmp_path, resume="sometimes", steps=1)
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        train_tiny(tmp_path, batchnorm="global", steps=1)


def start_training(tmp_path, steps=2000):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(tmp_path, **{**RUN, "steps": steps, "sample_every": 1,
                                                        "state_every": 1000})))
    return subprocess.Popen([sys.executable, "-m", "training.cli", "train", str(cfg)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})


def wait_for_grids(proc, run, count, timeout=240):
    deadline = time.monotonic() + timeout
    while len(list(run.glob("grid_*.png"))) < count:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.2)


def test_sigint_writes_the_resume_state_at_a_step_boundary_and_exits_with_one_line(tmp_path):
    proc = start_training(tmp_path)
    try:
        wait_for_grids(proc, tmp_path / "run", 3)  # a few steps in, long before the first state (step 1000)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT
    last = err.strip().splitlines()[-1]
    step = torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"]
    assert 3 <= step < 2000
    assert last == (f"ganforge train: stopped by SIGINT at step {step}; resume state {tmp_path / 'run' / 'state.pt'}; "
                    f"continue with --resume (or resume: auto)")
    assert not (tmp_path / "ckpt").exists()  # stopped, not finished: no export
    assert [p for p in tmp_path.rglob("*.tmp")] == []
