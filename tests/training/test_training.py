"""The engine on the segmentation task: checkpoints, exact resume, reproducibility, Ctrl-C,
refusal to overwrite, time budget, class weighting."""

from __future__ import annotations

import pytest
import torch

from medseg.data.splits import auto_patch_size, split_cases
from medseg.errors import InputError
from medseg.physics import PhantomSpec, write_phantom_dataset
from medseg.tasks import segmentation as seg_mod
from medseg.training import checkpoint as ckpt_mod
from medseg.training import engine
from medseg.training.config import ExperimentConfig
from medseg.training.engine import train


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "ds", PhantomSpec(shape=(32, 32), modality="mr",
                                                   lesion_fraction=0.03), n_train=6, n_test=2,
                          seed=1)
    return root / "ds"


def tiny_cfg(dataset, out, epochs=2, seed=0) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.data.dataset = str(dataset)
    cfg.data.val_fraction = 0.34
    cfg.output_dir = str(out)
    cfg.model.options = {"channels": [8, 16, 32], "dropout": 0.1}
    cfg.train.epochs = epochs
    cfg.train.steps_per_epoch = 3
    cfg.train.batch_size = 4
    cfg.train.patch_size = [32, 32]
    cfg.train.seed = seed
    cfg.train.device = "cpu"
    cfg.train.val_every = 1
    return cfg


def _weights(folder, name=ckpt_mod.LAST_NAME):
    return torch.load(folder / name, weights_only=True)["model"]


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_train_writes_model_folder(tiny_dataset, tmp_path):
    res = train(tiny_cfg(tiny_dataset, tmp_path / "m"), log=lambda s: None)
    out = tmp_path / "m"
    for name in ("config.yaml", "plan.json", "checkpoint_last.pt", "checkpoint_best.pt",
                 "train_log.csv"):
        assert (out / name).is_file(), name
    assert res.epochs_done == 2 and len(res.history) == 2
    assert 0.0 <= res.best_metric <= 1.0 and res.metric == "dice_mean"
    ck = torch.load(out / "checkpoint_last.pt", weights_only=True)  # safe unpickler
    assert ck["epoch"] == 1 and ck["task"] == "segmentation" and ck["metric"] == "dice_mean"
    assert ck["best_metric"] == res.best_metric
    assert ExperimentConfig.load(out / "config.yaml").train.epochs == 2
    # no temp files left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_seed_reproducible_and_resume_exact(tiny_dataset, tmp_path):
    full = tmp_path / "full"
    train(tiny_cfg(tiny_dataset, full, epochs=3), log=lambda s: None)
    again = tmp_path / "again"
    train(tiny_cfg(tiny_dataset, again, epochs=3), log=lambda s: None)
    assert _same(_weights(full), _weights(again)), "same seed must give the same weights"

    # interrupted after epoch 2 (simulate by training a 3-epoch run whose 3rd epoch is cut)
    part = tmp_path / "part"
    cfg = tiny_cfg(tiny_dataset, part, epochs=3)
    calls = {"n": 0}
    real = seg_mod.make_epoch_loader

    def flaky(data, cfg_, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(data, cfg_, epoch, **kw)

    seg_mod.make_epoch_loader = flaky
    try:
        res = train(cfg, log=lambda s: None)
    finally:
        seg_mod.make_epoch_loader = real
    assert res.interrupted and res.epochs_done == 2
    assert torch.load(part / "checkpoint_last.pt", weights_only=True)["epoch"] == 1
    res2 = train(tiny_cfg(tiny_dataset, part, epochs=3), resume=True, log=lambda s: None)
    assert res2.epochs_done == 3 and not res2.interrupted
    assert _same(_weights(full), _weights(part)), "resume must replay the run exactly"
    other = tmp_path / "other"
    train(tiny_cfg(tiny_dataset, other, epochs=3, seed=1), log=lambda s: None)
    assert not _same(_weights(full), _weights(other)), "another seed gives other weights"


def test_weight_averaging_follows_the_recurrence_and_resumes_exactly(tiny_dataset, tmp_path,
                                                                    monkeypatch):
    """train.ema: the saved ``model`` is e_1 = w_1, e_k = d e_(k-1) + (1 - d) w_k over the
    weights after every applied step, the raw weights travel as ``train_model``, and an
    interrupted run resumes to the same averaged and raw weights."""
    decay = 0.8
    seen: list[dict[str, torch.Tensor]] = []
    real_step = engine._Run.step

    def spy(self, *a, **k):
        ok = real_step(self, *a, **k)
        seen.append({n: v.detach().clone() for n, v in self.model.state_dict().items()})
        return ok

    cfg = tiny_cfg(tiny_dataset, tmp_path / "full", epochs=3)
    cfg.train.ema = decay
    cfg.model.options["norm"] = "batch"  # running statistics (averaged) and a step counter
    monkeypatch.setattr(engine._Run, "step", spy)
    train(cfg, log=lambda s: None)
    monkeypatch.setattr(engine._Run, "step", real_step)
    ck = torch.load(tmp_path / "full" / ckpt_mod.LAST_NAME, weights_only=True)
    assert len(seen) == 9 and ck["ema_steps"] == 9
    assert _same(ck["train_model"], seen[-1])
    floats = [n for n, v in seen[0].items() if v.is_floating_point()]
    expect = {n: seen[0][n].double() for n in floats}
    for w in seen[1:]:
        for n in floats:
            expect[n] = decay * expect[n] + (1 - decay) * w[n].double()
    for n in floats:
        assert torch.allclose(ck["model"][n].double(), expect[n], rtol=1e-5, atol=1e-6), n
    assert not torch.allclose(ck["model"][floats[0]], ck["train_model"][floats[0]])
    counters = [n for n, v in seen[0].items() if not v.is_floating_point()]
    assert counters and all(torch.equal(ck["model"][n], seen[-1][n]) for n in counters)

    part = tmp_path / "part"
    cfg = tiny_cfg(tiny_dataset, part, epochs=3)
    cfg.train.ema = decay
    cfg.model.options["norm"] = "batch"
    real = seg_mod.make_epoch_loader

    def flaky(data, cfg_, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(data, cfg_, epoch, **kw)

    monkeypatch.setattr(seg_mod, "make_epoch_loader", flaky)
    assert train(cfg, log=lambda s: None).interrupted
    monkeypatch.setattr(seg_mod, "make_epoch_loader", real)
    cfg.train.ema = 0.0  # the saved config decides on resume, not the one given
    train(cfg, resume=True, log=lambda s: None)
    again = torch.load(part / ckpt_mod.LAST_NAME, weights_only=True)
    assert _same(again["model"], ck["model"]) and _same(again["train_model"], ck["train_model"])
    # prediction loads the averaged weights: the best checkpoint's model is an average too
    best = torch.load(part / ckpt_mod.BEST_NAME, weights_only=True)
    assert "train_model" in best and not _same(best["model"], best["train_model"])


def test_refuses_to_overwrite_and_resume_needs_checkpoint(tiny_dataset, tmp_path):
    out = tmp_path / "m"
    train(tiny_cfg(tiny_dataset, out, epochs=1), log=lambda s: None)
    before = (out / "checkpoint_last.pt").read_bytes()
    with pytest.raises(InputError, match="already holds a trained model"):
        train(tiny_cfg(tiny_dataset, out, epochs=1), log=lambda s: None)
    assert (out / "checkpoint_last.pt").read_bytes() == before
    with pytest.raises(InputError, match="nothing to resume"):
        train(tiny_cfg(tiny_dataset, tmp_path / "empty", epochs=1), resume=True,
              log=lambda s: None)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt_mod.atomic_torch_save({"model": {"w": torch.ones(2)}}, path)
    good = path.read_bytes()

    def boom(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.atomic_torch_save({"model": {}}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_ctrl_c_during_save_finishes_the_write_then_interrupts(tmp_path, monkeypatch):
    """A real SIGINT inside torch.save: the new file lands whole, then KeyboardInterrupt."""
    import os
    import signal

    path = tmp_path / "c.pt"
    real_save = torch.save

    def interrupted_save(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # delivered now; deferred by atomic_torch_save
        real_save(obj, f)

    monkeypatch.setattr(ckpt_mod.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.atomic_torch_save({"model": {"w": torch.full((3,), 7.0)}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.full((3,), 7.0))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "checkpoint_best.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="checkpoint_best.pt.*cannot read checkpoint"):
        ckpt_mod.load_checkpoint(p)


def test_split_keeps_subjects_together():
    ids = [f"{s:03d}_{k}HC" for s in range(10) for k in ("", "2", "3")]
    tr, va = split_cases(ids, 0.2, seed=0, group_regex=r"^(\d+)_")
    assert set(tr).isdisjoint(va) and sorted(tr + va) == sorted(ids)
    assert {i[:3] for i in tr}.isdisjoint({i[:3] for i in va})
    assert len(va) == 6  # two whole subjects of three images = 20% of 30
    assert split_cases(ids, 0.0, 0) == (ids, [])


def test_auto_patch_size():
    assert auto_patch_size((128, 128), 16, 256 * 256) == (128, 128)
    p2 = auto_patch_size((540, 800), 16, 256 * 256)
    assert p2 == (208, 304)  # aspect 0.68 kept (540/800 = 0.675), 63232 <= 65536 voxels
    p = auto_patch_size((200, 200, 30), (16, 16, 4), 64**3)
    assert all(v % d == 0 for v, d in zip(p, (16, 16, 4), strict=True))
    assert p[0] * p[1] * p[2] <= 64**3
    # every axis keeps about the same share of the image (aspect kept within one step)
    shares = [v / s for v, s in zip(p, (200, 200, 30), strict=True)]
    assert max(shares) - min(shares) < 0.15, p


def test_time_budget_refits_epochs():
    cfg = ExperimentConfig()
    cfg.train.epochs = 100
    cfg.train.max_minutes = 10.0  # 600 s
    msgs = []
    # 20 s per epoch after the first epoch: 30 epochs fit
    assert engine.fit_budget(cfg, 0, 100, 20.0, msgs.append) == 30
    assert "100 -> 30" in msgs[0]
    # after 10 epochs the machine slowed to 30 s/epoch on average: 300 s left -> 10 more
    assert engine.fit_budget(cfg, 9, 30, 300.0, msgs.append) == 20
    # over budget: stop after the current epoch, never below the epochs done
    assert engine.fit_budget(cfg, 24, 20, 700.0, msgs.append) == 25
    # never more than train.epochs
    assert engine.fit_budget(cfg, 0, 100, 1.0, msgs.append) == 100


def test_fixed_class_weights_follow_the_formula(tiny_dataset, tmp_path):
    def weights(cfg, data):
        model = seg_mod.SegmentationTask().build_model(cfg, data)
        tr = seg_mod.SegmentationTrainer(cfg, data, model, torch.device("cpu"))
        return tr.acw, tr.loss_fn.class_weights

    cfg = tiny_cfg(tiny_dataset, tmp_path / "m")
    cfg.loss.class_weighting = "fixed"
    cfg.loss.weight_min = 0.0  # see the unclipped formula (3% lesion gives w < 1)
    data = seg_mod.prepare_data(cfg, log=lambda s: None)
    acw, w = weights(cfg, data)
    assert acw is None and w.shape == (3,) and w[0] == 1.0
    fr = data.summary["class_fractions"]
    a = fr[2] / sum(fr.values())
    expected = (1 - a) * 0.02 / (a * (1 - 0.30))  # L4 with p0 = 0.02, p1 = 0.30
    assert float(w[2]) == pytest.approx(expected, rel=1e-5)
    cfg.loss.weight_min = 1.0
    assert float(weights(cfg, data)[1][2]) == max(1.0, expected)
    res = train(cfg, log=lambda s: None)
    assert res.epochs_done == 2


def test_adaptive_class_weights_logged_and_resumed_exactly(tiny_dataset, tmp_path):
    def cfg_for(out):
        c = tiny_cfg(tiny_dataset, out, epochs=3)
        c.loss.class_weighting = "adaptive"
        return c

    res = train(cfg_for(tmp_path / "full"), log=lambda s: None)
    w = [res.history[-1][f"weight_{n}"] for n in ("background", "organ", "lesion")]
    assert w[0] == 1.0 and all(1.0 <= v <= 100.0 for v in w) and w[2] > w[1] > 1.0
    part = tmp_path / "part"
    real = seg_mod.make_epoch_loader

    def flaky(data, cfg_, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(data, cfg_, epoch, **kw)

    seg_mod.make_epoch_loader = flaky
    try:
        assert train(cfg_for(part), log=lambda s: None).interrupted
    finally:
        seg_mod.make_epoch_loader = real
    ck = torch.load(part / "checkpoint_last.pt", weights_only=True)
    assert "class_weights_state" in ck["task_state"]
    train(cfg_for(part), resume=True, log=lambda s: None)
    assert _same(_weights(tmp_path / "full"), _weights(part))


def test_a_pickle_with_code_is_refused_without_echoing_torchs_advice(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "checkpoint_best.pt"
    torch.save({"model": Evil()}, p)
    with pytest.raises(InputError, match="not a weights-only checkpoint: medseg never loads "
                                         "it with weights_only=False") as e:
        ckpt_mod.load_checkpoint(p)
    assert "weights_only=True" not in str(e.value) and "Weights only load failed" not in \
        str(e.value)
