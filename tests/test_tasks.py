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
