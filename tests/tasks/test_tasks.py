"""Output types of the tasks (T1, T2, T3, T5)."""

from __future__ import annotations

import pytest
import torch

from medseg.tasks import ClassProbs, LabelMap, MultiLabel, ObservationMask, SegProbs


def test_class_probs_simplex_and_argmax():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    cp = ClassProbs.from_logits(logits)
    assert torch.allclose(cp.probs.sum(1), torch.ones(2))
    assert cp.hard().tolist() == [0, 1]
    with pytest.raises(ValueError, match="sum to 1"):
        ClassProbs(torch.tensor([[0.5, 0.6]]))


def test_multilabel_thresholds():
    ml = MultiLabel(torch.tensor([[0.2, 0.7, 0.55]]), torch.tensor([0.1, 0.8, 0.5]))
    assert ml.hard().tolist() == [[1, 0, 1]]
    assert MultiLabel.from_logits(torch.zeros(1, 2)).hard().tolist() == [[1, 1]]


def test_seg_probs_label_map_round_trip():
    logits = torch.randn(3, 9, 10)
    sp = SegProbs.from_logits(logits)
    lm = sp.hard()
    assert torch.equal(lm.labels, logits.argmax(0))
    oh = lm.one_hot()
    assert oh.shape == (3, 9, 10) and torch.equal(oh.argmax(0), lm.labels)
    with pytest.raises(ValueError, match="probabilities"):
        SegProbs(torch.full((2, 8, 8), 0.7))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        LabelMap(torch.tensor([[0, 3]]), 3)


def test_observation_mask_from_ignore_label():
    lab = torch.tensor([[0, 1, 255], [255, 2, 0]])
    m = ObservationMask.from_labels(lab, 255)
    assert m.observed.tolist() == [[True, True, False], [False, True, True]]
    assert m.fraction == pytest.approx(4 / 6)
    assert ObservationMask.from_labels(lab, None).fraction == 1.0


def test_instance_set_empty_and_round_trip():
    from medseg.tasks import InstanceSet

    e = InstanceSet.empty((5, 6))
    assert len(e) == 0 and e.to_label_map().sum() == 0 and e.areas().numel() == 0
    assert len(InstanceSet.from_label_map(torch.zeros(4, 4, dtype=torch.long))) == 0
    lab = torch.zeros(6, 6, dtype=torch.long)
    lab[0:2, 0:2] = 3
    lab[3:6, 3:5] = 7
    sem = torch.zeros(6, 6, dtype=torch.long)
    sem[0:2, 0:2] = 2
    sem[3:6, 3:5] = 1
    sem[5, 4] = 2  # minority pixel: the instance keeps its majority class 1
    s = InstanceSet.from_label_map(lab, semantic=sem)
    assert len(s) == 2 and s.classes.tolist() == [2, 1] and s.areas().tolist() == [4, 6]
    back = s.to_label_map()
    assert torch.equal(back > 0, lab > 0) and set(back.unique().tolist()) == {0, 1, 2}
    assert torch.equal(s.to_semantic_map()[lab == 7], torch.ones(6, dtype=torch.long))


def test_instance_overlap_policy_higher_score_wins():
    from medseg.tasks import InstanceSet

    m = torch.zeros(2, 4, 4, dtype=torch.bool)
    m[0, :, :3] = True
    m[1, :, 1:] = True  # columns 1-2 overlap
    s = InstanceSet(m, torch.tensor([1, 2]), torch.tensor([0.4, 0.9]), (4, 4))
    lm = s.to_label_map()
    assert lm[:, 0].tolist() == [1] * 4 and lm[:, 1:].unique().tolist() == [2]
    tie = InstanceSet(m, torch.tensor([1, 2]), torch.tensor([0.5, 0.5]), (4, 4))
    assert tie.to_label_map()[:, 1:3].unique().tolist() == [1]  # equal scores: lower index
    with pytest.raises(ValueError, match="scores"):
        InstanceSet(m, torch.tensor([1, 2]), torch.tensor([0.5, 1.5]), (4, 4))
    with pytest.raises(ValueError, match="classes"):
        InstanceSet(m, torch.tensor([1]), torch.tensor([0.5, 0.5]), (4, 4))
