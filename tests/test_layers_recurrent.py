"""[rnn], [gru], [lstm], [crnn]: not run yet, but shaped and counted exactly (spec §2.24, §5)."""
import numpy as np
import pytest

from darknetpy.errors import UnsupportedError
from darknetpy.layers.base import Shape
from darknetpy.network import load_cfg, network_from_text
from darknetpy.weights import read_weights, weights_bytes


def connected_floats(inputs, outputs, bn):
    return outputs + inputs * outputs + (3 * outputs if bn else 0)


def conv_floats(channels, filters, bn):
    return filters + (3 * filters if bn else 0) + channels * filters * 9


@pytest.mark.filterwarnings("ignore::darknetpy.errors.DarknetWarning")
@pytest.mark.parametrize("name,expected", [("rnn.cfg", 8950016), ("gru.cfg", 1250048)])
def test_corpus_weight_counts(shared_dir, name, expected):
    net = load_cfg(shared_dir / "cfg-corpus" / name)
    assert net.weights_float_count() == expected


@pytest.mark.parametrize("section,count", [
    ("[rnn]\noutput=5\nbatch_normalize=1\nactivation=leaky",
     connected_floats(12, 5, True) + 2 * connected_floats(5, 5, True)),
    ("[gru]\noutput=5", 3 * connected_floats(5, 5, False) + 3 * connected_floats(12, 5, False)),
    ("[lstm]\noutput=5\nbatch_normalize=1", 4 * connected_floats(5, 5, True) + 4 * connected_floats(12, 5, True)),
])
def test_vector_recurrent_layers_are_flat_and_counted(section, count):
    net = network_from_text(f"[net]\ninputs=12\n\n{section}\n\n[connected]\noutput=3")
    assert net.shapes[0] == Shape.flat(5)
    assert net.layers[0].parameter_count() == count
    assert net.layers[1].inputs == 5


def test_crnn_is_an_image_layer_of_three_convolutions():
    net = network_from_text("[net]\nwidth=6\nheight=5\nchannels=3\n\n"
                            "[crnn]\nhidden_filters=4\noutput_filters=7\nbatch_normalize=1")
    assert net.shapes[0] == Shape(7, 5, 6)
    layer = net.layers[0]
    assert layer.parameter_count() == conv_floats(3, 4, True) + conv_floats(4, 4, True) + conv_floats(4, 7, True)
    assert layer.summary_row().startswith("CRNN Layer: 5 x 6 x 3 image, 7 filters\n\t\tconv      4  3 x 3 / 1")


def test_forward_raises_at_the_section_line():
    net = network_from_text("[net]\ninputs=4\n\n[gru]\noutput=3\n\n[rnn]\noutput=2")
    assert net.layers[1].summary_row().splitlines()[0] == "RNN Layer: 3 inputs, 2 outputs"
    with pytest.raises(UnsupportedError) as err:
        net.forward(np.zeros((1, 4), np.float32))
    assert str(err.value) == "<string>:4: [gru] layers are not supported yet"


def test_weights_pass_through_unchanged(tmp_path):
    net = network_from_text("[net]\ninputs=4\n\n[rnn]\noutput=3\nbatch_normalize=1")
    data = weights_bytes(net)
    floats = np.arange((len(data) - 20) // 4, dtype=np.float32)
    path = tmp_path / "rnn.weights"
    path.write_bytes(data[:20] + floats.tobytes())
    read_weights(net, path)
    assert weights_bytes(net) == data[:20] + floats.tobytes()
