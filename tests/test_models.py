"""The tasks' small CNN: one class for digits and image, with the weights the two former classes had."""

from __future__ import annotations

import hashlib

import pytest
import torch

from fedge.tasks.digits import DigitsTask
from fedge.tasks.image import ImageTask
from fedge.tasks.models import small_cnn

#: sha256 over sorted state names and tensor bytes of the seed-0 model, recorded with the
#: classes small_cnn replaced (DigitsCNN, ImageCNN at cd1e223, torch 2.13.0): the merge
#: must not change a default run's weights (issue 10, must-show 7).
SEED0_DIGESTS = {
    "digits": "7af8817bbaa12f4aa481ea4904930535c4279ecb3364e6e54f9347611540b758",
    "image": "2756e37ad170724c6bda451b783ac609a7690aa0fe8ab6ecac6b9934e40a5cc9",
}


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(("task", "params", "names"), [
    (DigitsTask(), 38_282, ["features.0", "features.2", "classifier.1", "classifier.3"]),
    (ImageTask(), 114_314, ["features.0", "features.3", "classifier.1", "classifier.3"]),
])
def test_small_cnn_keeps_the_former_models_weights_names_and_sizes(task, params, names):
    torch.manual_seed(0)
    model = task.build_model()
    state = model.state_dict()
    assert sum(t.numel() for t in state.values()) == params
    assert sorted({k.rsplit(".", 1)[0] for k in state}) == sorted(names)
    assert digest(state) == SEED0_DIGESTS[task.name]
    assert model(torch.zeros(3, *task.input_shape)).shape == (3, 10)


def test_small_cnn_refuses_shapes_it_cannot_build():
    with pytest.raises(ValueError, match="kernel_size"):
        small_cnn((1, 8, 8), 10, kernel_size=4)
    with pytest.raises(ValueError, match="too small"):
        small_cnn((1, 2, 2), 10, pools=2)
    with pytest.raises(ValueError, match="input_shape"):
        small_cnn((8, 8), 10)
