"""Fine-tuning on the knowledge graph and the unlearning loop, each readable in one sitting.

:func:`finetune` teaches a model the graph's facts: the spine's pretraining loop
(:func:`entroflow.model.pretrain`: length buckets, AdamW, warm-up and cosine decay) over the
fact documents and the Yes/No/Unknown lines of :func:`entroflow.unlearn.world.training_documents`,
every token predicted. The ``base`` model sees every trained triple, the gold ``retain`` model the
same recipe (same seed, same steps) without the forget set: exact unlearning, the reference for
forget quality, PrivLeak and relative inferability.

:func:`unlearn` runs one method of :mod:`entroflow.unlearn.losses` for ``steps`` AdamW steps
(constant learning rate, gradient clipping at 1), OpenUnlearning's recipe: each step draws a
batch of forget pairs and, for the methods with a retain term, an equally large batch of retain
pairs ("anchored on forget"). A pair is (prompt, answer) of one training phrasing of a triple; the
loss reads the answer tokens only (the paper's QA format). The reference model of NPO / IdkDPO /
RMU is a frozen copy of the model before unlearning. IdkDPO's preferred answer is ``unknown``,
the refusal the verification lines teach. RMU steers the hidden states of one layer (default the
middle block, ``layers // 2``) at the positions that *predict* answer tokens, where the forgotten
object is produced (OpenUnlearning hooks the positions of the answer tokens themselves; for a
one-token object that would leave its own prediction untouched).
"""
from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence

import torch

from entroflow import model as model_lib
from entroflow.unlearn import losses, probes

IDK_ANSWER = "unknown"
# Each method's hyper-parameters and their defaults (OpenUnlearning's, reference §B5.2).
METHOD_DEFAULTS: dict[str, dict] = {
    "grad_ascent": {},
    "grad_diff": {"gamma": 1.0, "alpha": 1.0},
    "npo": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0},
    "simnpo": {"beta": 4.5, "delta": 0.0, "gamma": 0.125, "alpha": 1.0},
    "idk_dpo": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0},
    "rmu": {"steering_coeff": 2.0, "gamma": 1.0, "alpha": 1.0, "layer": None},
}
RETAIN_METHODS = ("grad_diff", "npo", "simnpo", "idk_dpo", "rmu")  # a retain batch each step (alpha > 0)


class _Reached(Exception):
    """Raised from the training callback once the facts are known (model.pretrain has no stop hook,
    and changing it would change the pretraining stage's code version and every cached base)."""


def finetune(model, tokenizer, docs: dict[str, list[str]], weights: dict[str, float], steps: int,
             batch_size: int, lr: float, seed: int, warmup: int,
             on_step: Callable[[int, dict], None] | None = None,
             known: Callable[[], float] | None = None, target: float = 1.0, check_every: int = 50,
             stop_at: int | None = None) -> list[dict]:
    """Train ``model`` in place on ``docs`` (``{source: texts}``, mixed by ``weights``) with the
    learning-rate schedule of ``steps`` steps. Stops early: after step ``stop_at`` when given (the
    retain model stops where the base did), else at the first multiple of ``check_every`` where
    ``known()`` (the fact accuracy) reaches ``target``. Returns the per-step records run."""
    sources = {k: [model_lib.make_document(tokenizer, "", t, k, True) for t in v] for k, v in docs.items()}
    history: list[dict] = []

    def step_hook(step: int, rec: dict) -> None:
        history.append(rec)
        if on_step:
            on_step(step, rec)
        done = step + 1
        if stop_at is not None:
            if done >= stop_at:
                raise _Reached
        elif known is not None and done % check_every == 0 and done < steps:
            model.eval()
            acc = known()
            model.train()
            rec["fact_accuracy"] = acc
            if acc >= target:
                raise _Reached

    try:
        model_lib.pretrain(model, sources, weights, steps, batch_size, lr, seed, weight_decay=0.0,
                           warmup=warmup, min_lr_ratio=0.1, on_step=step_hook)
    except _Reached:
        pass
    model.eval()
    return history


def fact_accuracy(model, tokenizer, rows: Sequence[dict], batch_size: int = 256) -> float:
    """Share of ``rows`` (``prompt, answer, wrong``) whose true answer is the top candidate: the
    cheap check of :func:`finetune` (one phrasing per fact)."""
    from entroflow.unlearn.evaluate import score_pairs  # the evaluation's batched pass

    pairs = [(r["prompt"], c) for r in rows for c in (r["answer"], *r["wrong"])]
    scored = score_pairs(model, tokenizer, pairs, batch_size)
    right, i = 0, 0
    for r in rows:
        lbar = [sum(s["logps"]) / len(s["logps"]) for s in scored[i:i + 1 + len(r["wrong"])]]
        i += len(lbar)
        right += lbar[0] > max(lbar[1:])
    return right / len(rows)


def _spans(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    return probes.answer_spans(tokenizer, pairs) if pairs else []


def _forward(model, spans: list[tuple[list[int], int]], pad: int, layer: int | None):
    """Answer-token log-probs [B, T], their mask, and (``layer`` given) that layer's hidden states
    [B, T, d] at the same positions (position t predicts token t + 1)."""
    device = next(model.parameters()).device
    ids, attn = probes.pad_rows([row for row, _ in spans], pad)
    mask = torch.zeros((len(spans), ids.shape[1] - 1), dtype=torch.bool)
    for i, (row, start) in enumerate(spans):
        mask[i, start - 1:len(row) - 1] = True
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=attn, output_hidden_states=layer is not None)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    acts = out.hidden_states[layer][:, :-1].float() if layer is not None else None
    return logp, mask, acts


def unlearn(model, tokenizer, method: str, forget: Sequence[tuple[str, str]], retain: Sequence[tuple[str, str]],
            steps: int, lr: float, batch_size: int, seed: int, hp: dict | None = None,
            on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Unlearn ``forget`` (prompt, answer) pairs from ``model`` in place with ``method``; ``retain``
    pairs feed the retain term. ``hp`` overrides :data:`METHOD_DEFAULTS`. Returns per-step records
    (loss, grad norm, seconds)."""
    if method not in losses.METHODS:
        raise ValueError(f"method: unknown unlearning method {method!r} (known: {', '.join(losses.METHODS)})")
    if not forget:
        raise ValueError("forget: the forget set is empty")
    hp = {**METHOD_DEFAULTS[method], **(hp or {})}
    unknown = set(hp) - set(METHOD_DEFAULTS[method])
    if unknown:
        raise ValueError(f"{method}: unknown hyper-parameter(s) {sorted(unknown)} "
                         f"(known: {sorted(METHOD_DEFAULTS[method]) or 'none'})")
    needs_retain = method in RETAIN_METHODS and hp.get("alpha", 0) > 0
    if needs_retain and not retain:
        raise ValueError(f"{method}: needs retain pairs for its retain term (alpha > 0)")
    pad = probes._pad_id(tokenizer)
    f_spans, r_spans = _spans(tokenizer, forget), _spans(tokenizer, retain)
    idk_spans = _spans(tokenizer, [(p, IDK_ANSWER) for p, _ in forget]) if method == "idk_dpo" else []
    layer = None
    if method == "rmu":
        layer = hp["layer"] if hp["layer"] is not None else max(1, model.config.num_hidden_layers // 2)
        if not 1 <= layer <= model.config.num_hidden_layers:
            raise ValueError(f"rmu: layer {layer} outside 1..{model.config.num_hidden_layers}")
        control = losses.rmu_control_vector(model.config.hidden_size, seed)
    ref = None
    if method in ("npo", "idk_dpo", "rmu"):
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    rng = random.Random(f"{seed}/unlearn/batches")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    history = []
    for step in range(steps):
        t0 = time.perf_counter()
        fi = [rng.randrange(len(f_spans)) for _ in range(batch_size)]
        ri = [rng.randrange(len(r_spans)) for _ in range(batch_size)] if needs_retain else []
        fb, rb = [f_spans[i] for i in fi], [r_spans[i] for i in ri]
        r_logp = r_mask = None
        if needs_retain and method != "rmu":
            r_logp, r_mask, _ = _forward(model, rb, pad, None)
        if method == "grad_ascent":
            f_logp, f_mask, _ = _forward(model, fb, pad, None)
            loss = losses.grad_ascent(f_logp, f_mask)
        elif method == "grad_diff":
            f_logp, f_mask, _ = _forward(model, fb, pad, None)
            loss = (losses.grad_diff(f_logp, f_mask, r_logp, r_mask, gamma=hp["gamma"], alpha=hp["alpha"])
                    if needs_retain else hp["gamma"] * losses.grad_ascent(f_logp, f_mask))
        elif method == "npo":
            f_logp, f_mask, _ = _forward(model, fb, pad, None)
            with torch.no_grad():
                ref_logp, _, _ = _forward(ref, fb, pad, None)
            loss = losses.npo(f_logp, f_mask, ref_logp, beta=hp["beta"], retain_logps=r_logp, retain_mask=r_mask,
                              alpha=hp["alpha"], gamma=hp["gamma"])
        elif method == "simnpo":
            f_logp, f_mask, _ = _forward(model, fb, pad, None)
            loss = losses.simnpo(f_logp, f_mask, beta=hp["beta"], delta=hp["delta"], gamma=hp["gamma"],
                                 retain_logps=r_logp, retain_mask=r_mask, alpha=hp["alpha"])
        elif method == "idk_dpo":
            ib = [idk_spans[i] for i in fi]
            f_logp, f_mask, _ = _forward(model, fb, pad, None)
            i_logp, i_mask, _ = _forward(model, ib, pad, None)
            with torch.no_grad():
                ref_f, _, _ = _forward(ref, fb, pad, None)
                ref_i, _, _ = _forward(ref, ib, pad, None)
            loss = losses.idk_dpo(f_logp, f_mask, i_logp, i_mask, ref_f, ref_i, beta=hp["beta"],
                                  retain_logps=r_logp, retain_mask=r_mask, alpha=hp["alpha"], gamma=hp["gamma"])
        else:  # rmu
            _, f_mask, f_acts = _forward(model, fb, pad, layer)
            rb = rb or fb[:1]  # alpha 0: a dummy retain batch whose term is multiplied by 0
            _, r_mask, r_acts = _forward(model, rb, pad, layer)
            with torch.no_grad():
                _, _, frozen = _forward(ref, rb, pad, layer)
            loss = losses.rmu(f_acts, f_mask, r_acts, r_mask, frozen, control.to(f_acts.device),
                              steering_coeff=hp["steering_coeff"], alpha=hp["alpha"], gamma=hp["gamma"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{method}: loss is {loss.item()} at step {step} (lower the learning rate)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec = {"step": step, "loss": loss.item(), "grad_norm": float(gnorm), "seconds": time.perf_counter() - t0}
        history.append(rec)
        if on_step:
            on_step(step, rec)
    model.eval()
    return history
