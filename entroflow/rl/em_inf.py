"""EM-INF: inference-time entropy minimisation of the next-token logits, as a logits processor.

Agarwal et al. 2025, "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning"
(arXiv 2505.15134), §4, Eq. 5. At every decoding step the model's last-position logits ``z`` are
treated as free parameters (the model itself is frozen) and a few optimiser steps are taken on::

    L(z) = max( H(softmax(z)), delta )                                    (Eq. 5)

i.e. entropy is pushed down until it reaches the floor ``delta`` and no further. The released
code (``shivamag125/EM_PT:eval/utils/em_inf_utils.py``) runs Adam (lr 0.1) on the fp32 logits for
``n_grad_steps`` steps, breaks once ``H < threshold``, and adds ``kl_weight * KL(p_orig || p_new)``
to the loss — an anchor that Eq. 5 does not have ([paper != code]; ``kl_weight=0`` here gives the
paper's objective). Paper guidance: ``delta`` in (0.1, 0.5), 5-15 steps; script defaults
``threshold=0.3``, ``lr=0.1``.

What this implementation adds to the reference loop
---------------------------------------------------
* **The floor is exact.** The reference loop checks ``H < delta`` only *before* a step, so the
  last step can overshoot far below ``delta``. Here, when an Adam step would take a row below
  ``delta``, the step is replaced by a line search on ``z_prev + alpha (z_new - z_prev)``:
  20 bisection iterations on ``alpha`` keep the largest tested ``alpha`` whose entropy is still
  ``>= delta`` (the entropy at ``alpha = 0`` is ``> delta``, so one always exists), and the row
  stops there, just above ``delta``.
* **Never worse than the input.** A step that would raise a row's entropy above its *input*
  entropy (possible with Adam's normalised steps or a KL anchor) or that would change the row's
  argmax is rejected and the row stops at its previous iterate; a final check reverts any row
  whose output violates either property to its input. Hence, for every row with input entropy
  ``H_in > delta``: ``delta <= H_out <= H_in`` and ``argmax`` is unchanged; rows with
  ``H_in <= delta`` (and rows without a finite entropy) are returned bit-for-bit unchanged.
* **Rows are independent.** The loss is the *sum* over rows (not the reference's
  ``batchmean``, which would couple rows through the scale), Adam is element-wise, and every row
  stops on its own schedule, so a row's output does not depend on its batch — the rollout
  engine's contract for processors.

Prop. 1 of the paper: under gradient descent on ``H`` the top logit's gradient
``-p_k (log p_k + H)`` is the most negative (``log p_max >= -H``), so the most likely token stays
the most likely and *greedy* decoding with EM-INF equals plain greedy decoding. EM-INF only
matters under sampling, where the sharper distribution changes what is drawn (the engine applies
temperature/top-k/top-p *after* processors, as the reference applies its temperature after the
optimisation). The argmax check above makes Prop. 1 hold for Adam steps too.

Masked tokens: logits that are ``-inf`` on input (a constraint or another processor banned the
token) stay exactly ``-inf``. They are excluded from the parameters — optimised as a finite
placeholder with zero gradient and put back as ``-inf`` — so no ``inf - inf`` NaN can appear.

The rollout engine calls processors inside ``torch.inference_mode()``, where autograd records
nothing and inference tensors cannot be saved for backward; the optimisation therefore runs
under ``torch.inference_mode(False)`` and ``torch.enable_grad()`` on a fresh clone of the scores.
"""
from __future__ import annotations

import torch

from entroflow.rl.objectives import token_entropy


class EMInfProcessor:
    """Logits processor ``proc(input_ids [B,t], scores [B,V]) -> scores [B,V]`` applying EM-INF.

    ``delta``: entropy floor in nats (rows at or below it are untouched); ``n_steps``: maximum
    Adam steps per decoding step; ``lr``: Adam learning rate on the logits; ``kl_weight``: weight
    of ``KL(p_orig || p_new)`` added to the entropy (0 = paper Eq. 5). ``bisect_iters``: line-search
    iterations when a step crosses ``delta`` (20 halvings resolve ``alpha`` to ~1e-6).
    """

    def __init__(
        self,
        delta: float = 0.3,
        n_steps: int = 5,
        lr: float = 0.1,
        kl_weight: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        bisect_iters: int = 20,
    ):
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.delta = float(delta)
        self.n_steps = int(n_steps)
        self.lr = float(lr)
        self.kl_weight = float(kl_weight)
        self.betas = betas
        self.adam_eps = float(adam_eps)
        self.bisect_iters = int(bisect_iters)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.dim() != 2:
            raise ValueError(f"scores must be [B, V], got {tuple(scores.shape)}")
        with torch.inference_mode(False), torch.enable_grad():
            return self._apply(scores)

    # ----------------------------------------------------------------------------------------

    def _apply(self, scores: torch.Tensor) -> torch.Tensor:
        z_in = scores.detach().clone().float()  # a normal tensor even if scores is an inference tensor
        h_in_all = token_entropy(z_in)
        work = h_in_all > self.delta  # NaN (all -inf / NaN rows) compares False: left alone
        if self.n_steps == 0 or not bool(work.any()):
            return scores
        rows = work.nonzero().squeeze(1)
        masked = torch.isneginf(z_in[rows])
        z0 = z_in[rows].masked_fill(masked, 0.0)  # finite parametrisation; -inf restored on output
        h_in = h_in_all[rows]
        top = self._argmax(z0, masked)
        z = self._optimise(z0, masked, h_in, top)

        # Final guard: whatever numerical corner case slipped through, an output row is either
        # the optimised one satisfying all three guarantees or the untouched input row.
        with torch.no_grad():
            h_out = self._entropy(z, masked)
            ok = (
                torch.isfinite(h_out)
                & (h_out >= self.delta)
                & (h_out <= h_in)
                & (self._argmax(z, masked) == top)
            )
            z = torch.where(ok[:, None], z, z0)
            out = z_in.clone()
            out[rows] = z.masked_fill(masked, float("-inf"))
        return out.to(scores.dtype)

    def _optimise(
        self, z0: torch.Tensor, masked: torch.Tensor, h_in: torch.Tensor, top: torch.Tensor
    ) -> torch.Tensor:
        """Up to ``n_steps`` Adam steps per row with the delta line search; returns final logits."""
        b1, b2 = self.betas
        z = z0.clone()
        m = torch.zeros_like(z)
        v = torch.zeros_like(z)
        running = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        if self.kl_weight > 0:
            logp_orig = torch.log_softmax(z0.masked_fill(masked, float("-inf")), dim=-1)
            logp_orig = logp_orig.masked_fill(masked, 0.0)
            p_orig = torch.exp(logp_orig).masked_fill(masked, 0.0)
        for step in range(1, self.n_steps + 1):
            zp = z.clone().requires_grad_(True)
            loss = self._entropy(zp, masked).sum()  # sum: each row's gradient is its own
            if self.kl_weight > 0:
                logp_new = torch.log_softmax(zp.masked_fill(masked, float("-inf")), dim=-1)
                logp_new = logp_new.masked_fill(masked, 0.0)
                loss = loss + self.kl_weight * (p_orig * (logp_orig - logp_new)).sum()
            (grad,) = torch.autograd.grad(loss, zp)
            with torch.no_grad():
                m = b1 * m + (1 - b1) * grad
                v = b2 * v + (1 - b2) * grad * grad
                # All running rows started together, so one bias correction serves every row.
                m_hat = m / (1 - b1**step)
                v_hat = v / (1 - b2**step)
                z_new = z - self.lr * m_hat / (v_hat.sqrt() + self.adam_eps)
                h_new = self._entropy(z_new, masked)
                same_top = self._argmax(z_new, masked) == top
                bad = running & (~torch.isfinite(h_new) | ~same_top | (h_new > h_in))
                cross = running & ~bad & (h_new < self.delta)
                good = running & ~bad & ~cross
                z = torch.where(good[:, None], z_new, z)
                if bool(cross.any()):
                    z[cross] = self._line_search(z[cross], z_new[cross], masked[cross])
                running = good & (h_new > self.delta)
                if not bool(running.any()):
                    break
        return z

    def _line_search(self, z_a: torch.Tensor, z_b: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Point on ``z_a -> z_b`` just above the floor: H(z_a) > delta > H(z_b) per row.

        Invariant: ``H(z_a + lo * d) >= delta`` (true at lo = 0) and ``H(z_a + hi * d) < delta``;
        the result is ``z_a + lo * d``, so its entropy is ``>= delta`` by construction. The argmax
        is the same at both ends, hence everywhere on the segment (a convex combination of two
        vectors whose first maximum is at k keeps its first maximum at k).
        """
        d = z_b - z_a
        lo = torch.zeros(z_a.shape[0], 1, dtype=z_a.dtype, device=z_a.device)
        hi = torch.ones_like(lo)
        for _ in range(self.bisect_iters):
            mid = (lo + hi) / 2
            above = (self._entropy(z_a + mid * d, masked) >= self.delta)[:, None]
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return z_a + lo * d

    @staticmethod
    def _entropy(z: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return token_entropy(z.masked_fill(masked, float("-inf")))

    @staticmethod
    def _argmax(z: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return z.masked_fill(masked, float("-inf")).argmax(-1)
