"""Stage ``train_rl``: one RL method (GRPO, DAPO, EMPO, EM-RL, EM-FT) trained on the base model."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa

from entroflow import answers, lean_lm
from entroflow import model as model_lib
from entroflow import rollout as rollout_lib
from entroflow.progress import note, progress_bar
from entroflow.rl import objectives, settings
from entroflow.rl import trainer as trainer_lib
from tasks._stage import StageOutput, stage
from entroflow.data import tables
from entroflow.data.tables import EVAL_FILES, eval_problems, read_eval_table

LABEL_FREE_COLUMNS = ["id", "prompt"]  # what label-free methods may read of the training split


def training_prompts(data_dir: Path, with_labels: bool) -> tuple[list[dict], list[dict]]:
    """Train prompts (answers only when the method's reward uses labels) and the evaluated
    prompts with answers (for the diagnostic accuracy curve, never for rewards)."""
    table = read_eval_table(data_dir)
    cols = LABEL_FREE_COLUMNS + (["answer"] if with_labels else [])
    train = table.filter(pa.compute.equal(table["split"], "train")).select(cols).to_pylist()
    test = eval_problems(data_dir, "test", None).select(["id", "prompt", "answer"]).to_pylist()
    return train, test


@stage("train_rl", code=[trainer_lib, objectives, settings, model_lib, rollout_lib, lean_lm, answers, tables], reads={"generate_data": EVAL_FILES})
def train_rl(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    cfg = settings.TrainConfig(**{**config["train"], "betas": tuple(config["train"]["betas"])})
    cfg.validate()
    # train.device, unless auto, overrides model.device for this stage.
    cfg.device = model_lib.runtime_device(cfg.device if cfg.device != "auto" else config["runtime"]["device"])
    # fp32 master weights whatever model.dtype says: train.dtype bf16 autocasts the forward.
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), "float32", cfg.device)
    # Label-free methods get prompts without the answer column, so no code path can read labels;
    # the diagnostic training accuracy is then absent for them (held-out accuracy still shown).
    train, test = training_prompts(parents["generate_data"], with_labels=cfg.reward not in settings.LABEL_FREE)
    with progress_bar(f"train_rl {cfg.method}", total=cfg.steps, unit="step") as advance:
        tr = trainer_lib.RLTrainer(model, tokenizer, cfg, train, work_dir=out.work_dir, eval_prompts=test,
                                   step_callback=lambda k, st: advance(1, reward=st.get("reward_mean", 0.0)),
                                   prompt_format=rollout_lib.PromptFormat.for_tokenizer(tokenizer, **config["prompt"]))
        resumed_from = tr.step
        if resumed_from:
            note(f"train_rl {cfg.method}: resumed from the checkpoint at step {resumed_from} of {cfg.steps}")
        advance(resumed_from)
        history = tr.train()
    for h in history:
        out.log_step(h["step"], **{k: v for k, v in h.items() if k != "step" and v is not None})
    if tr.evals:
        out.table("evals", pa.Table.from_pylist(tr.evals))
    model.save_pretrained(str(out.dir / "model"))
    tokenizer.save_pretrained(str(out.dir / "model"))
    src = out.work_dir / "rollouts"
    if src.exists():
        shutil.copytree(src, out.dir / "rollouts")
    last = history[-min(10, len(history)):]
    mean = lambda k: sum(h.get(k, 0.0) for h in last) / len(last)  # noqa: E731
    out.log(steps=len(history), resumed_from_step=resumed_from, final_reward_mean=mean("reward_mean"), final_token_entropy=mean("token_entropy_mean"),
            final_response_length=mean("response_length_mean"),
            sequences_generated=sum(h.get("sequences_generated", 0) for h in history),
            sequences_trained=sum(h.get("kept_sequences", 0) for h in history),
            mean_frac_zero_std_groups=sum(h.get("frac_zero_std_groups", 0) for h in history) / len(history),
            rollout_seconds=sum(h.get("rollout_s", 0) for h in history),
            update_seconds=sum(h.get("update_s", 0) for h in history))
