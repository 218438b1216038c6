"""What happens to a cfg key that no option of its section reads: the one place that decides.

Darknet reads the keys it knows and prints "Unused field" for the rest. darknetpy reads every key a layer's
`Config` declares (or [net]'s reader asks for); a key left over is looked up here, first under its section
kind, then (for layer sections) under ANY_LAYER:

* WARN: a Darknet or AlexeyAB key for training features, GPU scheduling, tracking or display that darknetpy
  does not have; it never changes a forward pass. Accepted with one warning per file (summarised).
* SILENT: accepted without a word: [net] keys of other Darknet versions (Darknet never reports unread [net]
  keys) and AlexeyAB's DropBlock variants of [dropout] (plain dropout is what darknetpy trains).
* DEFAULT_ONLY: changes the forward pass or the .weights layout. Accepted at its default (with a warning);
  any other value is an UnsupportedError at its line.
* Anything else is an unknown key: a CfgError with a "did you mean".

A key never has two rules: a rule is never written for a key the section's Config reads (it could never
apply; tests/test_key_rules.py checks this for every registered layer), and section rules do not repeat
ANY_LAYER ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

WARN = "warn"
SILENT = "silent"
DEFAULT_ONLY = "default_only"

#: the rules every layer section shares (not [net])
ANY_LAYER = "*"


@dataclass(frozen=True)
class KeyRule:
    action: str                 # WARN, SILENT or DEFAULT_ONLY
    default: str | None = None  # DEFAULT_ONLY: the value that leaves results unchanged
    reason: str = ""            # what the key does, for the messages


def _warn(*keys: str, reason: str) -> dict[str, KeyRule]:
    return {key: KeyRule(WARN, reason=reason) for key in keys}


def _silent(*keys: str, reason: str) -> dict[str, KeyRule]:
    return {key: KeyRule(SILENT, reason=reason) for key in keys}


def _default_only(reason: str, **defaults: str) -> dict[str, KeyRule]:
    return {key: KeyRule(DEFAULT_ONLY, default, reason) for key, default in defaults.items()}


_RULES: dict[str, dict[str, KeyRule]] = {
    ANY_LAYER: {
        **_warn("clip", "dont_update", "burnin_update", "train_only_bn", "grad_centr", "dot", "noloss",
                "assisted_excitation", reason="a training-time setting of AlexeyAB's Darknet"),
        **_warn("stream", "wait_stream", reason="GPU stream scheduling"),
        **_default_only("rotation-invariant convolution (AlexeyAB)", sway="0", rotate="0", stretch="0",
                        stretch_sway="0"),
        **_default_only("a layer variant darknetpy does not implement", antialiasing="0", deform="0",
                        share_index="-1000000000", binary="0", xnor="0", bin_output="0", cbn="0", flipped="0",
                        coordconv="0", maxpool_depth="0", out_channels="1", weights_type="none",
                        weights_normalization="none", new_coords="0", noadjust="0"),
    },
    "net": _silent(
        "seen", "learning_rate_min", "sgdr_cycle", "sgdr_mult", "seq_scales", "track", "augment_speed",
        "sequential_subdivisions", "try_fix_nan", "weights_reject_freq", "equidistant_point",
        "badlabels_rejection_percentage", "num_sigmas_reject_badlabels", "ema_alpha", "use_cuda_graph",
        "loss_scale", "dynamic_minibatch", "optimized_memory", "workspace_size_limit_MB", "blur",
        "gaussian_noise", "mixup", "cutmix", "mosaic_bound", "contrastive", "contrastive_jit_flip",
        "contrastive_color", "unsupervised", "label_smooth_eps", "attention", "adversarial_lr",
        "max_chart_loss", "show_receptive_field",
        reason="a [net] key of another Darknet version (`seen` appears in pjreddie's own writing.cfg)"),
    "convolutional": _warn("reverse", reason="an AlexeyAB training-time setting"),
    "maxpool": _warn("maxpool_zero_nonmax", reason="an AlexeyAB training-time trick"),
    "rnn": _warn("hidden", reason="older Darknet's hidden size; pjreddie's rnn uses `output` for every "
                                  "sub-layer"),
    "cost": _warn("ratio", "noobj", "thresh", reason="GPU-only knobs of Darknet's cost layer"),
    "crop": _warn("angle", "saturation", "exposure", "shift", reason="[crop] training augmentation"),
    "dropout": _silent("dropblock", "dropblock_size_rel", "dropblock_size_abs",
                       reason="AlexeyAB's DropBlock; darknetpy trains plain dropout"),
    "yolo": _warn("delta_normalizer", "uc_normalizer", "counters_per_class", "objectness_smooth",
                  "track_history_size", "sim_thresh", "dets_for_track", "dets_for_show", "track_ciou_norm",
                  "embedding_layer", "show_details", "yolo_layer", "contrastive_neg_max",
                  reason="AlexeyAB's Gaussian/contrastive losses, tracking or display"),
    # pjreddie's region reads log/sqrt/classfix/absolute and never uses them; mask_scale only weighs
    # coords > 4 (refused for training)
    "region": _warn("log", "sqrt", "classfix", "absolute", "mask_scale", "focal_loss",
                    reason="a [region] option that changes nothing darknetpy does"),
    "detection": _warn("rescore", "coord_scale", "forced", "object_scale", "noobject_scale", "class_scale",
                       "reorg", reason="a [detection] training option darknetpy does not implement"),
}

RULES: Mapping[str, Mapping[str, KeyRule]] = MappingProxyType(
    {kind: MappingProxyType(rules) for kind, rules in _RULES.items()})


def rule_for(kind: str, key: str) -> KeyRule | None:
    """The rule for an unread `key` in a section of `kind` ("net" or a layer kind), or None (unknown key)."""
    rule = RULES.get(kind, {}).get(key)
    if rule is None and kind != "net":
        rule = RULES[ANY_LAYER].get(key)
    return rule
