"""RL method settings: what defines each method (presets) and the validated training config.

Kept free of torch so that configs are validated before anything heavy is imported.
"""
from __future__ import annotations

from dataclasses import dataclass

# Loss aggregations of rl.md §1.3, implemented in entroflow.rl.objectives.aggregate_tokens.
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

# What makes each method that method; shared hyperparameters come from the config (a per-method
# override in the config can still change any of these, e.g. `grpo: {kl_coef: 0}` for the TRL
# default). Every policy-gradient method also gets verl's dual clip (TrainConfig.clip_ratio_c = 3).
METHOD_PRESETS: dict[str, dict] = {
    # GRPO as published (DeepSeekMath, Shao et al. 2024, Eq. 3): symmetric clip 0.2, per-sequence
    # token mean, group-normalised correctness reward and beta * KL(pi || pi_ref) with the k3
    # estimator, beta = 0.04 (the paper's value and TRL 0.14's default; TRL's default is now 0).
    # The KL needs a frozen reference model: one more no-grad forward per step.
    "grpo": {"reward": "correct", "advantage": "grpo", "eps_low": 0.2, "eps_high": 0.2,
             "loss_agg": "seq-mean-token-mean", "dynamic_sampling": False, "overlong": False, "kl_coef": 0.04},
    # DAPO: Clip-Higher, dynamic sampling, token-level loss, soft overlong punishment.
    "dapo": {"reward": "correct", "advantage": "grpo", "eps_low": 0.2, "eps_high": 0.28,
             "loss_agg": "token-mean", "dynamic_sampling": True, "overlong": True, "kl_coef": 0.0},
    # EMPO: semantic-cluster reward, no labels, GRPO advantage, no KL.
    "empo": {"reward": "empo", "advantage": "grpo", "eps_low": 0.2, "eps_high": 0.2,
             "loss_agg": "token-mean", "dynamic_sampling": False, "overlong": False, "kl_coef": 0.0},
    # EM-RL (sequence): reward = mean token log-prob of the response, RLOO, small KL.
    "em_rl": {"reward": "em_sequence", "advantage": "rloo", "eps_low": 0.2, "eps_high": 0.2,
              "loss_agg": "token-mean", "dynamic_sampling": False, "overlong": False, "kl_coef": 0.001},
    # EM-FT: minimise the token entropy of the model's own samples; no reward.
    "em_ft": {"reward": "none", "objective": "entropy", "dynamic_sampling": False, "overlong": False},
}
REWARDS = ("correct", "empo", "em_sequence", "em_token", "token_frequency", "none")
LABEL_FREE = ("empo", "em_sequence", "em_token", "token_frequency", "none")


@dataclass
class TrainConfig:
    method: str = "grpo"
    reward: str = "correct"
    objective: str = "policy_gradient"  # policy_gradient | entropy (EM-FT)
    steps: int = 100
    prompts_per_step: int = 16
    group_size: int = 8
    lr: float = 1e-5
    warmup_steps: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ppo_epochs: int = 1
    mini_batch_size: int = 128  # sequences per optimizer step
    micro_batch_size: int = 64
    eps_low: float = 0.2
    eps_high: float = 0.2
    # verl's dual clip: the per-token loss of a negative-advantage token is capped at c * |A|, so a
    # token whose ratio exploded cannot dominate (verl default 3.0); None or 0 switch it off.
    clip_ratio_c: float | None = 3.0
    loss_agg: str = "token-mean"
    advantage: str = "grpo"  # grpo | rloo
    scale_by_std: bool = True
    kl_coef: float = 0.0
    dynamic_sampling: bool = False
    max_gen_rounds: int = 3
    overlong: bool = False
    overlong_cache: int = 12
    overlong_factor: float = 1.0
    empo_filter: bool = False
    empo_low: float = 0.3
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    answer_format: str = "synthetic"
    target_token: str = "7"  # for the token_frequency reward
    checkpoint_every: int = 25
    eval_every: int = 0
    eval_prompts: int = 200
    eval_samples: int = 4
    dtype: str = "fp32"  # fp32 | bf16 (autocast; master weights stay fp32)
    device: str = "auto"  # auto (CUDA when present, else CPU; in the pipeline: model.device) | cpu | cuda
    rollout_batch_size: int = 512
    # "auto": take the rollout engine's log-probs as pi_old where they provably equal the no-grad
    # trainer forward's (fp32, full tempered distribution; see RLTrainer._engine_logprobs_are_old)
    # and skip that forward; "always": run it every step.
    old_logprob_forward: str = "auto"
    seed: int = 0

    @classmethod
    def for_method(cls, method: str, shared: dict, override: dict | None = None) -> "TrainConfig":
        """Shared settings, then the method's defining preset, then per-method overrides."""
        if method not in METHOD_PRESETS:
            raise ValueError(f"unknown RL method '{method}' (known: {', '.join(METHOD_PRESETS)})")
        merged = {**shared, **METHOD_PRESETS[method], **(override or {}), "method": method}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown RL setting '{unknown[0]}'")
        if "betas" in merged:
            merged["betas"] = tuple(merged["betas"])
        cfg = cls(**merged)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward '{self.reward}' (known: {', '.join(REWARDS)})")
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"unknown loss_agg '{self.loss_agg}'")
        if self.advantage not in ("grpo", "rloo"):
            raise ValueError(f"unknown advantage '{self.advantage}'")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be fp32 or bf16, got '{self.dtype}'")
        if self.clip_ratio_c is not None and self.clip_ratio_c != 0 and not self.clip_ratio_c > 1:
            raise ValueError(f"clip_ratio_c (dual clip) must be > 1, or 0/None to disable it; got {self.clip_ratio_c}")
        if self.old_logprob_forward not in ("auto", "always"):
            raise ValueError(f"old_logprob_forward must be 'auto' or 'always', got '{self.old_logprob_forward}'")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.overlong and not 0 < self.overlong_cache <= self.max_new_tokens:
            raise ValueError("overlong_cache must be in (0, max_new_tokens]")
        for name in ("steps", "prompts_per_step", "group_size", "mini_batch_size", "micro_batch_size",
                     "ppo_epochs", "max_gen_rounds", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["betas"] = list(self.betas)
        return d
