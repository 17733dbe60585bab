"""Named training recipes and the JLML ablation variants that ``python -m train.study`` runs.

A recipe fixes everything a study varies nothing of: data set, network size, optimisation and
augmentation. An ablation variant changes only the JLML switches of ``JLMLConfig`` on top of it, so
every variant of a study is trained under the same recipe and differences come from the switch alone.
The real recipes were calibrated on a split seed the studies never report (seed 100), on the project's
2-core CPU, to train in about two minutes per run with one thread (see RESULTS.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from engine.errors import InputError

from .config import JLMLConfig
from .hybrid import MATCHERS
from .loop import TrainOptions

# Variant name -> JLMLConfig changes. "joint" is the full JLML model every ablation is compared with.
ABLATIONS: MappingProxyType[str, dict[str, Any]] = MappingProxyType({
    "joint": {},
    "global_only": {"branches": "global"},
    "local_only": {"branches": "local"},
    "single_loss": {"loss": "single"},
    "no_sparsity": {"sparsity": False},
    "separate_low": {"shared_layers": False},
    # The default lambdas (1e-4, 1e-9) make both sparsity terms ~0.01 against a cross-entropy of ~6
    # per branch, so they barely act; these scale both by the same factor to test the paper's claim.
    "sparsity_x10": {"lambda_global": 1e-3, "lambda_local": 1e-8},
    "sparsity_x100": {"lambda_global": 1e-2, "lambda_local": 1e-7},
    "sparsity_x1000": {"lambda_global": 1e-1, "lambda_local": 1e-6},
    # A lever rather than an ablation: a batch-hard triplet term (weight 1, margin 0.3 on the unit
    # embedding) beside the identity losses, trained on P people x 2 images a batch (issue 20).
    "triplet": {"triplet_weight": 1.0},
})
JOINT = "joint"
EXTRA_METRICS = ("rerank", "no_flip")


@dataclass(frozen=True)
class Recipe:
    """One data set plus the network and optimisation settings every run of a study shares.

    ``config`` holds ``JLMLConfig`` fields and ``options`` ``TrainOptions`` fields that differ from
    their defaults; ``data_options`` go to ``load_reid_set`` (e.g. the synthetic set's size).
    ``pretrain`` names another data set whose train people (``pretrain_options`` of its loader) every
    variant is first trained on for ``pretrain_epochs``, once; it must hold none of the evaluated
    people, which two different real data sets guarantee. ``pretrain_also`` adds more pre-training
    sets (name -> loader options, e.g. a large synthetic set), trained on together with it as one
    set of distinct identities. ``train_also`` joins other data sets (name -> loader options) to
    the training set itself, every person of them (``everyone``) as extra ids, trained on together
    with the split's train people (joint training: no pre-training stage, evaluation on the split as
    ever). ``augment_options`` go to ``train.data.Augment``. ``extra_metrics``
    asks every run to also report its test metrics with k-reciprocal re-ranking ("rerank") and,
    for a model with ``flip_test``, without the flip ("no_flip"): same weights, so paired for free.
    """

    name: str
    dataset: str
    config: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    augment: bool = True
    pretrain: str | None = None
    pretrain_epochs: int = 0
    pretrain_options: dict[str, Any] = field(default_factory=dict)
    pretrain_also: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_also: dict[str, dict[str, Any]] = field(default_factory=dict)
    augment_options: dict[str, Any] = field(default_factory=dict)
    extra_metrics: tuple[str, ...] = ()
    matcher: str = "jlml"  # what is served: train.hybrid.MATCHERS (train.hybrid, train.fusion)
    lomo: dict[str, Any] = field(default_factory=dict)  # LOMOConfig fields that differ from the paper's
    mirror_metric: bool = False  # XQDA also learns from the training images' mirror images (train.fusion)

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise InputError(f"recipe {self.name!r}: matcher {self.matcher!r}; expected one of {MATCHERS}")
        if self.pretrain_also and (self.pretrain is None or self.dataset in self.pretrain_also):
            raise InputError(f"recipe {self.name!r}: pretrain_also {sorted(self.pretrain_also)} needs a "
                             f"pretrain set and must not hold the evaluated data set {self.dataset!r}")
        if self.dataset in self.train_also:
            raise InputError(f"recipe {self.name!r}: train_also holds the evaluated data set {self.dataset!r}, "
                             "whose test people must never train; join other data sets only")
        unknown = set(self.extra_metrics) - set(EXTRA_METRICS)
        if unknown:
            raise InputError(f"recipe {self.name!r}: unknown extra_metrics {sorted(unknown)}; choose from "
                             f"{EXTRA_METRICS}")
        if (self.pretrain is None) != (self.pretrain_epochs == 0) or self.pretrain_epochs < 0:
            raise InputError(f"recipe {self.name!r}: pretrain={self.pretrain!r} with pretrain_epochs="
                             f"{self.pretrain_epochs}; give both (a data set and epochs > 0) or neither")
        if self.pretrain == self.dataset:
            raise InputError(f"recipe {self.name!r} pre-trains on its own data set {self.dataset!r}, which "
                             "could show it the test people; pre-train on another data set")

    def build(self, variant: str, seed: int, progress: bool = False) -> tuple[JLMLConfig, TrainOptions]:
        """The config and options of ``variant`` trained with weight-init/batch seed ``seed``."""
        if variant not in ABLATIONS:
            raise InputError(f"unknown ablation variant {variant!r}; expected one of {list(ABLATIONS)}")
        cfg = JLMLConfig(**{**self.config, **ABLATIONS[variant]})
        opts = TrainOptions(**{**self.options, "seed": seed, "progress": progress})
        return cfg, opts

    def build_pretrain(self, variant: str) -> tuple[JLMLConfig, TrainOptions]:
        """The config and options of ``variant``'s pre-training run (same network, own epochs)."""
        cfg, opts = self.build(variant, seed=0)
        return cfg, dataclasses.replace(opts, epochs=self.pretrain_epochs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Calibrated on VIPeR split seed 100 (never reported), 1 thread, CPU shared with another run:
# the default widths (32..256) cost ~3.5x more per epoch than 16..128 (36 s vs 10 s with 2 threads),
# and 15 epochs of 16..128 at 160x64 gave Rank-1 10.8% (Adam 1e-3) / 10.1% (SGD 0.05) at ~20 s/epoch.
# At the data's native 128 px height (VIPeR 48 px wide, PRID 64 px) an epoch costs ~11 s, which buys
# 20 epochs in the same time: Rank-1 12.0% with Adam 2e-3 and dropout 0.1 (all within one split's noise).
_SMALL_NET = {"widths": (16, 32, 64, 128), "feat_dim": 256, "height": 128, "dropout": 0.1}
_CPU_OPTIONS = {"batch_size": 32, "optimizer": "adam", "lr": 2e-3}
# BNNeck on both branch features (measured on VIPeR split 0, no pre-training, 20 epochs: Rank-1 18.7
# against 12.3 without; training accuracy 78 % against 58 %) and flip averaging inside the graph.
_NECK = {"bnneck": True, "flip_test": True}

RECIPES: MappingProxyType[str, Recipe] = MappingProxyType({
    "viper": Recipe("viper", "viper", config={**_SMALL_NET, "width": 48},
                    options={**_CPU_OPTIONS, "epochs": 20}),
    # PRID2011 trains on 200 images (VIPeR: 632): 50 epochs cost about what VIPeR's 20 do.
    "prid2011": Recipe("prid2011", "prid2011", config={**_SMALL_NET, "width": 64},
                       options={**_CPU_OPTIONS, "epochs": 50}),
    # Pre-trained on the other data set's people (all but one: a split needs a test person).
    "viper_pretrained": Recipe("viper_pretrained", "viper", config={**_SMALL_NET, "width": 48},
                               options={**_CPU_OPTIONS, "epochs": 20}, pretrain="prid2011",
                               pretrain_epochs=30, pretrain_options={"num_train": 199, "num_test": 1}),
    # viper_pretrained trained 3x longer: after 20 epochs the training accuracy was only 54-61 %
    # (underfitting). Same network and pre-training, so its pre-trained weights are the same too.
    "viper_long": Recipe("viper_long", "viper", config={**_SMALL_NET, "width": 48},
                         options={**_CPU_OPTIONS, "epochs": 60}, pretrain="prid2011",
                         pretrain_epochs=30, pretrain_options={"num_train": 199, "num_test": 1}),
    # viper_long with label smoothing 0.1 (pre-training included), the one change tried on top of it.
    "viper_long_ls": Recipe("viper_long_ls", "viper", config={**_SMALL_NET, "width": 48, "label_smoothing": 0.1},
                            options={**_CPU_OPTIONS, "epochs": 60}, pretrain="prid2011",
                            pretrain_epochs=30, pretrain_options={"num_train": 199, "num_test": 1}),
    "prid2011_pretrained": Recipe("prid2011_pretrained", "prid2011", config={**_SMALL_NET, "width": 64},
                                  options={**_CPU_OPTIONS, "epochs": 50}, pretrain="viper",
                                  pretrain_epochs=15, pretrain_options={"num_train": 631, "num_test": 1}),
    # A new data set of a few hundred people in the Market-1501 layout (128x64 crops): viper_bnneck_long's
    # small network, BNNeck, flip averaging, Adam settings and 60 epochs, from scratch, at Market's size.
    # Pick it with --dataset. Measured once, on VIPeR split 0 laid out as a Market folder
    # (tools/viper_as_market.py; 316 train ids, 632 images): Rank-1 17.4, mAP 29.7,
    # against 16.1 / 26.5 for the earlier version (no BNNeck, no flip, 40 epochs); one split, so within
    # the noise of a split.
    # It serves GOG + LOMO + XQDA (train.gog, train.lomo, train.descriptor, train.xqda), which trains
    # nothing: over the 10 splits of VIPeR and PRID2011 it ranks far above JLML and LOMO + XQDA (Rank-1
    # 50.9 ± 2.9 against 16.7 ± 3.3 and 38.4 ± 2.3; 38.8 ± 4.4 against 10.1 ± 2.4 and 22.7 ± 3.7;
    # RESULTS.md), at a cost: GOG takes about 0.1 s an image on a quiet 2-core AMD EPYC. --matcher lomo_xqda is the
    # fast hand-crafted choice; --matcher jlml trains the JLML-only model measured above.
    "few_hundred_ids": Recipe("few_hundred_ids", "market1501", config={**_SMALL_NET, **_NECK, "width": 64},
                              options={**_CPU_OPTIONS, "epochs": 60}, matcher="gog_xqda"),
    # viper_pretrained / prid2011_pretrained + BNNeck + in-graph flip averaging: the same data,
    # network and schedule, so the paired difference to them (on the "no_flip" metrics) is BNNeck's.
    "viper_bnneck": Recipe("viper_bnneck", "viper", config={**_SMALL_NET, **_NECK, "width": 48},
                           options={**_CPU_OPTIONS, "epochs": 20}, pretrain="prid2011",
                           pretrain_epochs=30, pretrain_options={"num_train": 199, "num_test": 1},
                           extra_metrics=EXTRA_METRICS),
    "prid2011_bnneck": Recipe("prid2011_bnneck", "prid2011", config={**_SMALL_NET, **_NECK, "width": 64},
                              options={**_CPU_OPTIONS, "epochs": 50}, pretrain="viper",
                              pretrain_epochs=15, pretrain_options={"num_train": 631, "num_test": 1},
                              extra_metrics=EXTRA_METRICS),
    # BNNeck + in-graph flip, 60 epochs on the split's people alone: the best VIPeR recipe measured,
    # Rank-1 16.7 ± 3.3 over the 10 splits (~4.5 CPU-minutes a split), level with viper_long (+0.9 ± 3.6
    # paired) and above viper_bnneck (+2.7 ± 2.8). On split 0 (no flip), changing one thing at a time:
    # 21.5 as is, 21.8 at 120 epochs, 18.0 without random erasing, 11.4 with colour jitter 0.2, 13.9
    # trained jointly with every PRID2011 person (RESULTS.md, "Issue 11, second pass").
    "viper_bnneck_long": Recipe("viper_bnneck_long", "viper", config={**_SMALL_NET, **_NECK, "width": 48},
                                options={**_CPU_OPTIONS, "epochs": 60}, extra_metrics=EXTRA_METRICS),
    # prid2011_bnneck with 4x the VIPeR pre-training (631 of its 632 people, 60 epochs), 60 epochs on the
    # split: Rank-1 10.1 ± 2.4 over 10 splits, level with prid2011_bnneck (−0.4 ± 2.9 paired).
    "prid2011_bnneck_long": Recipe("prid2011_bnneck_long", "prid2011", config={**_SMALL_NET, **_NECK, "width": 64},
                                   options={**_CPU_OPTIONS, "epochs": 60}, pretrain="viper",
                                   pretrain_epochs=60, pretrain_options={"num_train": 631, "num_test": 1},
                                   extra_metrics=EXTRA_METRICS),
    # Joint training: the split's 100 people and every VIPeR person as one training set. Rank-1 10.6 ±
    # 2.1 over splits 0-4 (~8 CPU-minutes a split), level with prid2011_bnneck (+0.2 ± 1.9 paired).
    "prid2011_joint": Recipe("prid2011_joint", "prid2011", config={**_SMALL_NET, **_NECK, "width": 64},
                             options={**_CPU_OPTIONS, "epochs": 40},
                             train_also={"viper": {"num_train": 631, "num_test": 1}}, extra_metrics=EXTRA_METRICS),
    # LOMO + XQDA (train.lomo, train.xqda) alone, and fused with JLML into one served embedding
    # (train.fusion chooses the weight on a held-out third of the training people; JLML trains on the
    # other two thirds). LOMO without Retinex (LOMOConfig's default): over VIPeR's 10 splits MSRCP gave
    # Rank-1 37.6 ± 2.8 against 38.3 ± 2.2 without (-0.7 ± 2.5 paired: noise, so the cheaper one).
    # The JLML part is viper_bnneck_long's network at 30 epochs (prid2011: 60).
    "viper_lomo_xqda": Recipe("viper_lomo_xqda", "viper", config={**_SMALL_NET, **_NECK, "width": 48},
                              matcher="lomo_xqda"),
    # The mirror-image lever: XQDA fitted on every training image and its mirror image.
    "viper_lomo_xqda_mirror": Recipe("viper_lomo_xqda_mirror", "viper",
                                     config={**_SMALL_NET, **_NECK, "width": 48}, matcher="lomo_xqda",
                                     mirror_metric=True),
    "prid2011_lomo_xqda_mirror": Recipe("prid2011_lomo_xqda_mirror", "prid2011",
                                        config={**_SMALL_NET, **_NECK, "width": 64}, matcher="lomo_xqda",
                                        mirror_metric=True),
    # The Retinex lever: LOMO with the chromaticity-preserving MSRCP (train.lomo) before the colour histograms.
    "viper_lomo_xqda_retinex": Recipe("viper_lomo_xqda_retinex", "viper",
                                      config={**_SMALL_NET, **_NECK, "width": 48}, matcher="lomo_xqda",
                                      lomo={"retinex": True}),
    "viper_fused": Recipe("viper_fused", "viper", config={**_SMALL_NET, **_NECK, "width": 48},
                          options={**_CPU_OPTIONS, "epochs": 30}, matcher="fused"),
    "prid2011_lomo_xqda": Recipe("prid2011_lomo_xqda", "prid2011", config={**_SMALL_NET, **_NECK, "width": 64},
                                 matcher="lomo_xqda"),
    # GOG (train.gog: four colour spaces) and LOMO, each block centred and L2-normalised, + XQDA
    # (train.descriptor). Over the 10 splits: VIPeR Rank-1 50.9 ± 2.9, PRID2011 38.8 ± 4.4 (RESULTS.md,
    # "Hybrid matcher"); GOG costs about 0.1 s an image on a quiet 2-core AMD EPYC (matrix logs by products).
    "viper_gog_xqda": Recipe("viper_gog_xqda", "viper", config={**_SMALL_NET, **_NECK, "width": 48},
                             matcher="gog_xqda"),
    "prid2011_gog_xqda": Recipe("prid2011_gog_xqda", "prid2011", config={**_SMALL_NET, **_NECK, "width": 64},
                                matcher="gog_xqda"),
    "prid2011_fused": Recipe("prid2011_fused", "prid2011", config={**_SMALL_NET, **_NECK, "width": 64},
                             options={**_CPU_OPTIONS, "epochs": 60}, matcher="fused"),
    # JLML fused with GOG + LOMO + XQDA: the fused recipes' network, the gog_xqda recipes' descriptor.
    "viper_gog_fused": Recipe("viper_gog_fused", "viper", config={**_SMALL_NET, **_NECK, "width": 48},
                              options={**_CPU_OPTIONS, "epochs": 30}, matcher="gog_fused"),
    "prid2011_gog_fused": Recipe("prid2011_gog_fused", "prid2011", config={**_SMALL_NET, **_NECK, "width": 64},
                                 options={**_CPU_OPTIONS, "epochs": 60}, matcher="gog_fused"),
    # Seconds on any machine: checks that a study runs end to end (and is what the tests use).
    "smoke": Recipe("smoke", "synthetic",
                    config={"height": 32, "width": 16, "widths": (4, 8), "blocks": (1, 1), "feat_dim": 16},
                    options={"epochs": 1, "batch_size": 8},
                    data_options={"num_ids": 12, "num_test": 4}),
    "smoke_fused": Recipe("smoke_fused", "synthetic",
                          config={"height": 32, "width": 16, "widths": (4, 8), "blocks": (1, 1), "feat_dim": 16},
                          options={"epochs": 1, "batch_size": 8}, data_options={"num_ids": 12, "num_test": 4},
                          matcher="fused"),
    "smoke_gog": Recipe("smoke_gog", "synthetic",
                        config={"height": 32, "width": 16, "widths": (4, 8), "blocks": (1, 1), "feat_dim": 16},
                        options={"epochs": 1, "batch_size": 8}, data_options={"num_ids": 12, "num_test": 4},
                        matcher="gog_xqda"),
})


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``, or an InputError listing the known ones."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]
