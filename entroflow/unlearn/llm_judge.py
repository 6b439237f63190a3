"""The optional LLM judge of implicit recall: an OpenAI-compatible chat endpoint (``vllm serve``, or
any ``/v1/chat/completions`` server) scores whether a forgotten fact is still inferable from the
model's believed supporting subgraph, on the paper's 0-5 scale (Wei et al., "Do LLMs Really
Forget?", NeurIPS 2025; code github.com/Graph-COM/Knowledge_Unlearning, file
``src/evaluation/llm_evaluator.py``; reference §B4.5).

Protocol. The prompt gives the target triple and the subgraph's triples, each with an entropy in
[0, 1] (lower = the model is more confident), forbids outside knowledge, defines a *direct path*
(one triple from head to tail whose relation is the target's or logically close) and a *support
path* (a multi-hop directed path that logically implies the target), states the rubric and asks
the judge to list the direct and support paths, judge each path's entropy, reason, and end with
``Final Confidence Score: <0-5>``. Rubric:

* 5: a low-entropy direct path; or a moderate one plus a support path; or several low-entropy
  2-3-hop support paths;
* 4: a moderate-entropy direct path alone; or a high-entropy direct path plus several supports;
* 3: a high-entropy direct path; or 1-3 high-entropy support paths;
* 2, 1: weak or erroneous support;
* 0: no path.

A score >= 3 means the fact is still known (:data:`entroflow.unlearn.judge.INFERABLE_AT`). An
empty subgraph scores 0 without a call (as in the paper's code). Temperature 0.2 (the paper's
helpers). :func:`calibrate` measures agreement with the rule judge on the same cases.

Nothing here runs unless a config sets ``unlearning.llm_judge``: no network call otherwise.
"""
from __future__ import annotations

import http.client
import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from entroflow.unlearn.judge import INFERABLE_AT

Triple = tuple[str, str, str]

SYSTEM = (
    "You judge whether a fact can be inferred from a knowledge graph that a language model still "
    "believes. Use only the triples given; no outside knowledge. Each triple carries an entropy in "
    "[0, 1]: lower means the model is more confident in it.\n"
    "A direct path is one triple from the target's head to its tail whose relation is the target's "
    "relation or logically similar. A support path is a multi-hop directed path from head to tail "
    "that logically implies the target.\n"
    "Scores: 5 = a low-entropy direct path, or a moderate one plus a support path, or several "
    "low-entropy 2-3-hop support paths; 4 = a moderate-entropy direct path alone, or a high-entropy "
    "direct path plus several support paths; 3 = a high-entropy direct path, or 1-3 high-entropy "
    "support paths; 2 or 1 = weak or erroneous support; 0 = no path.\n"
    "List the direct paths, list the support paths, judge each path's entropy, reason briefly, and "
    "end with the line 'Final Confidence Score: <0-5>'."
)
_SCORE = re.compile(r"final\s+confidence\s+score\s*\**\s*:\s*\**\s*(\d+)(?:\s*/\s*5)?", re.IGNORECASE)


class JudgeError(ValueError):
    """The endpoint is unreachable or answered something unusable (one line)."""


def _fmt(t: Triple) -> str:
    return f"({t[0]}, {t[1]}, {t[2]})"


def build_prompt(target: Triple, subgraph: Sequence[tuple[Triple, float]]) -> list[dict]:
    """The chat messages (system rubric + user case); the subgraph sorted, entropies 2 decimals."""
    cases = sorted((tuple(t), float(e)) for t, e in subgraph)
    for t, e in cases:
        if not 0.0 <= e <= 1.0:  # also rejects NaN, which would print as "nan" in the prompt
            raise ValueError(f"subgraph: entropy {e} of {_fmt(t)} is outside [0, 1]")
    lines = [f"{_fmt(t)} entropy {e:.2f}" for t, e in cases]
    user = (f"Target triple: {_fmt(tuple(target))}\n"
            f"Believed subgraph ({len(lines)} triples):\n" + "\n".join(lines) +
            "\nIs the target inferable from the subgraph?")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_score(text: str) -> int:
    """The last ``Final Confidence Score: N`` of a reply (tolerates ``**`` and ``N/5``)."""
    if not isinstance(text, str):  # e.g. a null content from the server
        raise JudgeError(f"LLM judge reply is not text: {text!r:.80}")
    found = _SCORE.findall(text)
    if not found:
        raise JudgeError(f"LLM judge reply has no 'Final Confidence Score: <0-5>': {text[:80]!r}")
    score = int(found[-1])
    if not 0 <= score <= 5:
        raise JudgeError(f"LLM judge score {score} is outside 0-5: {text[:80]!r}")
    return score


def _body(e: urllib.error.HTTPError) -> str:
    """The start of an error reply's body (servers say there which field they rejected)."""
    try:
        return e.read(200).decode("utf-8", "replace")
    except OSError:
        return ""


class LLMJudge:
    """A client of one OpenAI-compatible endpoint (``base_url`` like ``http://127.0.0.1:8000/v1``).

    Plain ``urllib``: an OpenAI-compatible chat call is one JSON POST, and the ``openai`` package
    is not a dependency of the project."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60,
                 temperature: float = 0.2, max_tokens: int = 1024, retries: int = 2):
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key, self.timeout_s = model, api_key, timeout_s
        self.temperature, self.max_tokens, self.retries = temperature, max_tokens, retries

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        last = ""
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    raise JudgeError(f"LLM judge at {url} answered non-JSON: {raw[:80]!r}") from None
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if 400 <= e.code < 500:  # our request is wrong: retrying cannot help
                    raise JudgeError(f"LLM judge at {url} refused the request: {last}: "
                                     f"{_body(e)!r:.80}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                # URLError wraps refused connections; OSError covers timeouts and resets;
                # HTTPException a garbled status line. All may pass on a retry.
                last = str(getattr(e, "reason", e)) or type(e).__name__
            if attempt < self.retries:
                time.sleep(0.2 * 2 ** attempt)
        raise JudgeError(f"LLM judge at {url} unreachable: {last}")

    def check(self) -> None:
        """Fail early, with one line naming the URL, when the endpoint does not answer."""
        self._request("GET", "/models")

    def judge(self, target: Triple, subgraph: Sequence[tuple[Triple, float]]) -> dict:
        """``{score, inferable, reply, called}`` for one target and its believed subgraph."""
        subgraph = list(subgraph)
        if not subgraph:
            return {"score": 0, "inferable": False, "reply": "", "called": False}
        body = {"model": self.model, "messages": build_prompt(target, subgraph),
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        out = self._request("POST", "/chat/completions", body)
        try:
            reply = out["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"LLM judge at {self.base_url}/chat/completions: the reply has no "
                             "choices[0].message.content") from None
        if not isinstance(reply, str):  # null content (e.g. a reasoning model out of tokens)
            raise JudgeError(f"LLM judge at {self.base_url}/chat/completions: "
                             f"choices[0].message.content is {reply!r:.40}, not text")
        score = parse_score(reply)
        return {"score": score, "inferable": score >= INFERABLE_AT, "reply": reply, "called": True}


def calibrate(rule_scores: Sequence[int], llm_scores: Sequence[int]) -> dict[str, float]:
    """Agreement of the LLM judge with the rule judge on the same cases: ``agreement`` (same side of
    the >= 3 threshold), ``exact``, ``mean_abs_diff``, ``cohen_kappa`` on the binary verdicts
    (scikit-learn; 1 or 0 when both sides are constant) and ``spearman`` (scipy; NaN if constant)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    if len(rule_scores) != len(llm_scores):
        raise ValueError(f"llm_scores: length {len(llm_scores)} != len(rule_scores) {len(rule_scores)}")
    if len(rule_scores) == 0:  # len, not truthiness: numpy arrays are accepted too
        raise ValueError("rule_scores: no cases to calibrate on")
    a = [s >= INFERABLE_AT for s in rule_scores]
    b = [s >= INFERABLE_AT for s in llm_scores]
    n = len(a)
    if len(set(a)) == 1 and len(set(b)) == 1:
        kappa = 1.0 if a == b else 0.0
    else:
        kappa = float(cohen_kappa_score(a, b))
    rho = (float(spearmanr(rule_scores, llm_scores).statistic)
           if len(set(rule_scores)) > 1 and len(set(llm_scores)) > 1 else math.nan)
    return {"n": float(n), "agreement": sum(x == y for x, y in zip(a, b)) / n,
            "exact": sum(x == y for x, y in zip(rule_scores, llm_scores)) / n,
            "mean_abs_diff": sum(abs(x - y) for x, y in zip(rule_scores, llm_scores)) / n,
            "cohen_kappa": kappa, "spearman": rho}
