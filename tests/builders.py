"""Networks built from cfg text for tests, so that test files do not each write their own builder.

`image_net` puts [net] on lines 1-4 (width, height, channels), so the first layer section starts on line 6;
`vector_net` puts it on lines 1-2 (inputs), the first layer section on line 4. Error-line assertions rely on it.
"""
from __future__ import annotations

import warnings

from darknetpy.errors import DarknetWarning
from darknetpy.network import Network, network_from_text


def image_net(layer_text: str, w: int, h: int, c: int, path: str = "<string>") -> Network:
    return network_from_text(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n{layer_text}", path)


def vector_net(layer_text: str, inputs: int, path: str = "<string>") -> Network:
    return network_from_text(f"[net]\ninputs={inputs}\n\n{layer_text}", path)


def quiet_net(text: str, path: str = "<string>") -> Network:
    """A whole cfg text built with darknetpy's warnings (training-only keys, defaults) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetWarning)
        return network_from_text(text, path)
