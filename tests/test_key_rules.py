"""config/key_rules.py is the one place that decides about cfg keys no option reads (issue 11).

Before it, four places decided: global tables, per-class `ignored_keys`/`silent_keys`, Config fields declared
only to be refused, and `_unsupported` helpers. Eight of the ten `ignored_keys` of [convolutional] (share_index,
cbn, coordconv, sway, rotate, stretch, stretch_sway, deform) never took effect, because the global table of
keys that change results was consulted first; and `xnor=1` raised a plain CfgError from a field declared only
to be refused. The checks below make a rule that can never apply (shadowed by a field, or written twice) fail.
"""
from __future__ import annotations

import dataclasses
import warnings

import pytest

import darknetpy.layers  # noqa: F401  (registers every layer class)
from darknetpy.config.key_rules import ANY_LAYER, DEFAULT_ONLY, RULES, WARN, rule_for
from darknetpy.errors import CfgError, DarknetWarning, UnsupportedError
from darknetpy.layers.base import LayerConfig, config_keys
from darknetpy.layers.registry import REGISTRY
from darknetpy.network import network_from_text

LAYER_KINDS = {cls.kind: cls for cls in REGISTRY.values()}


def test_every_section_rule_names_a_registered_section():
    assert set(RULES) - {ANY_LAYER, "net"} <= set(LAYER_KINDS)


@pytest.mark.parametrize("kind", sorted(set(RULES) - {ANY_LAYER, "net"}))
def test_no_rule_is_shadowed_by_an_option_the_section_reads(kind):
    shadowed = set(RULES[kind]) & set(config_keys(LAYER_KINDS[kind].Config))
    assert not shadowed, f"[{kind}] reads {sorted(shadowed)}: their rules could never apply"
    repeated = set(RULES[kind]) & set(RULES[ANY_LAYER])
    assert not repeated, f"[{kind}] repeats the shared rules for {sorted(repeated)}"


def test_shared_rules_are_not_shadowed_by_the_options_every_layer_reads():
    assert not set(RULES[ANY_LAYER]) & set(config_keys(LayerConfig))


def test_no_layer_class_declares_its_own_key_lists():
    for cls in LAYER_KINDS.values():
        assert not {"ignored_keys", "silent_keys"} & set(vars(cls)), cls.kind


def test_no_config_field_exists_only_to_be_refused():
    for cls in LAYER_KINDS.values():
        names = {field.name for field in dataclasses.fields(cls.Config)}
        assert not names & {"xnor", "antialiasing", "maxpool_depth"}, cls.kind


CONV = "[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=2\nsize=1\n{extra}\n"


@pytest.mark.parametrize("key,value", [("xnor", "1"), ("antialiasing", "1"), ("share_index", "3"), ("cbn", "1"),
                                       ("coordconv", "1"), ("sway", "1"), ("rotate", "1"), ("stretch", "1"),
                                       ("stretch_sway", "1"), ("deform", "1"), ("binary", "1")])
def test_keys_that_change_a_convolution_are_refused_alike(key, value):
    if key == "binary":  # [convolutional] reads binary (no effect on Darknet's CPU forward); [connected] does not
        text = "[net]\ninputs=4\n[connected]\noutput=2\n" + f"{key}={value}\n"
        line = 5
    else:
        text = CONV.format(extra=f"{key}={value}")
        line = 8
    with pytest.raises(UnsupportedError) as caught:
        network_from_text(text, "c.cfg")
    assert type(caught.value) is UnsupportedError
    assert (caught.value.path, caught.value.line) == ("c.cfg", line)
    assert f"{key}={value}" in caught.value.message and "not supported" in caught.value.message
    assert rule_for("convolutional", key).action == DEFAULT_ONLY


def test_training_only_key_of_a_convolution_is_accepted_with_a_warning():
    assert rule_for("convolutional", "reverse").action == WARN
    with pytest.warns(DarknetWarning, match="reverse"):
        network_from_text(CONV.format(extra="reverse=1\nassisted_excitation=1"), "w.cfg")


def test_defaults_of_refused_keys_are_accepted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetWarning)
        network = network_from_text(CONV.format(extra="xnor=0\nsway=0\nshare_index=-1000000000"), "d.cfg")
    assert network.shapes[0].c == 2


def test_a_key_of_another_section_is_unknown():
    with pytest.raises(CfgError, match="unknown key 'dets_for_track'"):
        network_from_text(CONV.format(extra="dets_for_track=1"), "u.cfg")
