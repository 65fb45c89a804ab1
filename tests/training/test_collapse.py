"""The mode-collapse alarm: fires on a synthetic collapse, stays quiet on a diverse sampler, acts in training."""
import json

import pytest
import torch
import torch.nn as nn

from models import load
from tests.training.helpers import shapes_classifier, train_tiny
from training.config import from_dict
from training.collapse import CollapseMonitor
from training.tasks import ConditionalTask
from tests.training.helpers import tiny_run


class Replay(nn.Module):
    """A 'generator' that returns real images of the requested class: `collapsed` always returns the first."""

    def __init__(self, images, labels, collapsed_classes=()):
        super().__init__()
        self.z_dim, self.collapsed = 4, set(collapsed_classes)
        self.images = nn.Parameter(images.float() / 127.5 - 1, requires_grad=False)  # (N, C, H, W) in [-1, 1]
        self.labels = labels

    def forward(self, z, y):
        out = []
        for zi, yi in zip(z, y.tolist()):
            pool = torch.nonzero(self.labels == yi).flatten()
            k = 0 if yi in self.collapsed else int(abs(zi[0].item()) * 1e6) % len(pool)
            out.append(self.images[pool[k]])
        return torch.stack(out)


@pytest.fixture(scope="module")
def monitor(tmp_path_factory):
    clf = shapes_classifier(tmp_path_factory.mktemp("clf"))
    cfg = from_dict(tiny_run(tmp_path_factory.mktemp("run"), classifier=str(clf)))
    task = ConditionalTask(cfg, torch.device("cpu"))
    return CollapseMonitor(cfg, task, torch.device("cpu")), task


def test_alarm_fires_on_a_collapsed_class_only(monitor):
    mon, task = monitor
    meta = task.metadata(0, {})
    healthy = mon.check(Replay(task.data.images[:800], task.data.labels[:800]), meta)
    assert min(healthy.values()) > 0.8, healthy
    broken = mon.check(Replay(task.data.images[:800], task.data.labels[:800], collapsed_classes={2}), meta)
    assert broken["triangle"] < 0.05 and min(v for k, v in broken.items() if k != "triangle") > 0.8, broken


def test_alarm_waits_for_a_fall_or_the_warmup(tmp_path, monitor):
    """Low diversity before warm-up alarms only for a class that had been varied before (reached collapse_arm,
    then fell below the threshold); from step collapse_warmup on, any class below the threshold alarms."""
    cfg = from_dict(tiny_run(tmp_path, classifier=str(monitor[0].cfg.classifier), collapse_warmup=300))
    mon = CollapseMonitor(cfg, monitor[1], torch.device("cpu"))
    assert (cfg.collapse_threshold, cfg.collapse_arm) == (0.5, 0.8)
    assert mon.collapsed({"a": 0.2, "b": 0.9}, step=100) == {}  # untrained-looking a: not yet a collapse
    assert mon.collapsed({"a": 0.6, "b": 0.3}, step=200) == {"b": 0.3}  # b fell from 0.9
    assert mon.collapsed({"a": 0.45, "b": 0.3}, step=250) == {"b": 0.3}  # a wobbles near 0.5, never armed
    assert mon.collapsed({"a": 0.85, "b": 0.3}, step=260) == {"b": 0.3}
    assert mon.collapsed({"a": 0.4, "b": 0.3}, step=270) == {"a": 0.4, "b": 0.3}  # a fell from 0.85
    late = CollapseMonitor(cfg, monitor[1], torch.device("cpu"))
    assert late.collapsed({"a": 0.2, "b": 0.9}, step=300) == {"a": 0.2}  # never varied by the warm-up


def test_resume_keeps_the_alarms_memory(tmp_path, monitor):
    """Which classes were armed is part of the resume state: a class armed before the interruption still
    alarms after it, as it would have in an uninterrupted run (threshold 10: every ratio is "low"; arm 0:
    every class arms at its first check, so the alarm can only fire from the second check on)."""
    kw = dict(collapse_check_every=2, collapse_threshold=10.0, collapse_arm=0.0, collapse_warmup=1000,
              state_every=2, classifier=str(monitor[0].cfg.classifier))
    train_tiny(tmp_path, steps=2, **kw)
    train_tiny(tmp_path, resume=True, steps=4, **kw)
    log = [json.loads(line) for line in (tmp_path / "run" / "collapse.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]
    assert log[0]["collapsed"] == {} and set(log[1]["collapsed"]) == {"circle", "square", "triangle", "cross"}


def test_stop_action_ends_training_and_logs_the_alarm(tmp_path, monitor):
    # threshold 10: any real run is "collapsed" by that bar, so the alarm must fire at the first check
    ckpt = train_tiny(tmp_path, steps=20, collapse_check_every=5, collapse_threshold=10.0, collapse_action="stop",
                      collapse_warmup=0, classifier=str(monitor[0].cfg.classifier))
    _, meta = load(ckpt)
    assert meta["provenance"]["steps"] == 5 and meta["provenance"]["stopped_early"] == "mode collapse"
    log = [json.loads(line) for line in (tmp_path / "run" / "collapse.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 5 and set(log[0]["collapsed"]) == {"circle", "square", "triangle", "cross"}


def test_bad_collapse_action(tmp_path):
    with pytest.raises(ValueError, match="collapse_action"):
        train_tiny(tmp_path, steps=1, collapse_action="panic")
