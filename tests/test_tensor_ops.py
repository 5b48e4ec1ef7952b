import pytest
import torch

from napari_sscce.tensor_ops import class_argmax


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_class_argmax_matches_argmax_including_ties(dim):
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 3, (3, 4, 5, 6), generator=gen).float()  # many ties
    assert torch.equal(class_argmax(values, dim), torch.argmax(values, dim))


def test_class_argmax_takes_the_first_of_equal_values():
    values = torch.tensor([[0.2, 0.4, 0.4], [0.5, 0.5, 0.0]])
    assert class_argmax(values, 1).tolist() == [1, 0]
    assert class_argmax(values.T.contiguous(), 0).tolist() == [1, 0]
