"""The spine DAG: generate_data -> build_tokenizer -> pretrain_base -> rollout -> evaluate -> report
(for a pretrained model, ``import_model`` takes the place of build_tokenizer and pretrain_base),
followed by the flows whose sections the config has: the ``reasoning`` RL comparison
(flows/reasoning.py, ``rl``), the ``watermark`` flow (flows/watermark.py), the ``ood`` flow
(flows/ood.py, over every model the others trained) and the ``unlearning`` flow
(flows/unlearning.py), then the run's one claims table.

Each node names its stage, the config sections that stage's cache key covers, and its parents
(``{name the stage reads them by: upstream stage}``). A stage whose verified output already
exists for its key comes back ``Cached``; ``force`` recomputes chosen stages and everything
downstream of them. One MLflow parent run per flow run, one child run per stage (cached or not).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from entroflow import workspace

workspace.bootstrap()  # before Prefect reads its settings

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from entroflow import provenance, tracking  # noqa: E402
from entroflow.progress import stage_line  # noqa: E402
from entroflow.config import PIPELINE_STAGES, PipelineConfig, check_stage_names, load_config  # noqa: E402
from entroflow.store import Store, pid_alive  # noqa: E402
from tasks._stage import Stage  # noqa: E402
from tasks.build_tokenizer import build_tokenizer  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.generate_data import generate_data  # noqa: E402
from tasks.import_model import import_model  # noqa: E402
from tasks.pretrain_base import pretrain_base  # noqa: E402
from tasks.report import report  # noqa: E402
from tasks.rollout import rollout  # noqa: E402


@dataclass(frozen=True)
class Node:
    stage: Stage
    parents: dict[str, str]  # name the body reads -> upstream stage
    section: Callable[[PipelineConfig, dict], dict]  # (config, config as dict) -> keyed section
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True


# A parent that is the base model: pretrain_base for model.source scratch, else import_model.
BASE_MODEL = "<base model>"


def upstream(cfg: PipelineConfig, up: str) -> str:
    return cfg.base_stage() if up == BASE_MODEL else up


def _scratch(cfg: PipelineConfig) -> bool:
    return cfg.model.source == "scratch"


def rollout_section(cfg: PipelineConfig, seed: int, em_inf: dict | None = None, spine: bool = False) -> dict:
    """The keyed section of a rollout: the decoding settings, the prompt format and how the model
    runs. The spine's rollout keeps the config's own ``rollout.em_inf``; the reasoning flow sets
    it per evaluation (None for the plain base, so the base at the spine's seed is the spine's)."""
    d = cfg.model_dump(mode="json")
    rollout = d["rollout"] if spine else {**d["rollout"], "em_inf": em_inf}
    return {"seed": seed, "rollout": rollout, "prompt": d["prompt"], "runtime": runtime_section(cfg, dtype=True)}


def runtime_section(cfg: PipelineConfig, dtype: bool) -> dict:
    """How a stage runs the model (keyed: bf16 decoding gives other samples than fp32)."""
    return {"device": cfg.model.device, **({"dtype": cfg.model.dtype} if dtype else {})}


MODEL_SIZE_KEYS = ("source", "hidden_size", "layers", "heads", "intermediate_size", "max_positions")
MODEL_SOURCE_KEYS = ("source", "package", "file", "path")


def _files(cfg: PipelineConfig, prefix: str) -> dict:
    """The ``files`` entry of a stage's keyed section: content digests of the input files the
    config points at under ``prefix`` (``data.``: the data stage, ``model.``: the model stage), so
    an edited file is never served from the cache. No input files: no entry, so configs without
    them keep their keys. Digests are memoised by (path, size, mtime, inode) in the store."""
    memo = workspace.input_digest_memo()
    files = {k: provenance.path_digest(p, memo) for k, p in cfg.input_paths().items() if k.startswith(prefix)}
    return {"files": files} if files else {}


DAG: list[Node] = [
    Node(generate_data, {}, lambda c, d: {"seed": c.seed, "data": d["data"],
                                          **_files(c, "data.")}),
    Node(build_tokenizer, {"generate_data": "generate_data"}, lambda c, d: {"tokenizer": d["tokenizer"]}, _scratch),
    Node(pretrain_base, {"generate_data": "generate_data", "build_tokenizer": "build_tokenizer"},
         lambda c, d: {"seed": c.seed, "model": {k: d["model"][k] for k in MODEL_SIZE_KEYS},
                       "pretrain": d["pretrain"]}, _scratch),
    Node(import_model, {}, lambda c, d: {"model": {k: d["model"][k] for k in MODEL_SOURCE_KEYS}, **_files(c, "model.")},
         lambda c: not _scratch(c)),
    Node(rollout, {"generate_data": "generate_data", "model": BASE_MODEL},
         lambda c, d: rollout_section(c, c.seed, spine=True)),
    Node(evaluate, {"generate_data": "generate_data", "rollout": "rollout"}, lambda c, d: {"evaluate": d["evaluate"]}),
    Node(report, {"generate_data": "generate_data", "model": BASE_MODEL, "rollout": "rollout",
                  "evaluate": "evaluate"},
         lambda c, d: {"name": c.name, "config_hash": provenance.config_hash(d), "report": d["report"],
                       "evaluate": d["evaluate"], "rollout": d["rollout"], "prompt": d["prompt"]}),
]



STAGE_NAMES = [n.stage.name for n in DAG]
assert tuple(STAGE_NAMES) == PIPELINE_STAGES[: len(STAGE_NAMES)], "keep entroflow.config.PIPELINE_STAGES in step"


def forced_closure(cfg: PipelineConfig, force: list[str]) -> set[str]:
    """The forced stages and labels, plus the spine stages downstream of them (the reasoning
    flow's stages downstream of a recomputed one are forced by :class:`Runner` as they run)."""
    check_stage_names(force)
    out = set(force)
    for node in DAG:
        if any(upstream(cfg, p) in out for p in node.parents.values()):
            out.add(node.stage.name)
    return out


def plan(cfg: PipelineConfig, force: list[str] = ()) -> list[dict]:
    """What the next run would do for the spine, without running anything: per stage its key,
    whether it would be Cached, and why (used by ``entroflow stages``)."""
    d = cfg.model_dump(mode="json")
    store = Store(workspace.store_root())
    forced = forced_closure(cfg, list(force))
    refs: dict[str, dict | None] = {}
    rows = []
    for node in DAG:
        name = node.stage.name
        ups = {alias: upstream(cfg, up) for alias, up in node.parents.items()}
        after = ", ".join(ups.values()) or "-"
        if not node.enabled(cfg):  # the other way to the base model (pretraining or import): not part of this run
            continue
        parents = {alias: refs.get(up) for alias, up in ups.items() if up in refs}
        waiting = [up for alias, up in ups.items() if up in refs and refs[up] is None]
        section = node.section(cfg, d)
        if waiting:
            refs[name] = None
            rows.append({"stage": name, "after": after, "status": "pending", "key": "?", "why": _waiting(waiting)})
            continue
        key = node.stage.key(section, parents)
        ref, why = store.lookup(name, key)
        if name in forced:
            ref, why = None, "forced (--force)"
        elif ref is None:
            why = why + _diff_from_latest(store, node.stage, section, parents) + _resumes(store, name, key)
        refs[name] = ref.model_dump() if ref else None
        rows.append({"stage": name, "after": after, "status": "cached" if ref else "run", "key": key, "why": why})
    flows = []
    if cfg.rl is not None:
        from flows.reasoning import run_reasoning

        flows.append(("reasoning (train_rl, rollout, evaluate, compare)", run_reasoning))
    if cfg.watermark is not None:
        from flows.watermark import run_watermark

        flows.append(("watermark (train_selector, watermark_generate/detect/quality, watermark_compare)", run_watermark))
    if cfg.ood is not None:
        from flows.ood import run_ood

        flows.append(("ood (ood_features, ood_detect, ood_compare)", run_ood))
    if cfg.unlearning is not None:
        from flows.unlearning import run_unlearning

        flows.append(("unlearning (unlearn_data, finetune_kg, unlearn, unlearn_evaluate, unlearn_compare)",
                      run_unlearning))
    if flows and (refs.get("generate_data") is None or refs.get(cfg.base_stage()) is None):
        for what, _ in flows:
            rows.append({"stage": what, "after": cfg.base_stage(), "status": "pending", "key": "?",
                         "why": _waiting([f"generate_data or {cfg.base_stage()}"])})
    elif flows:
        planner = _Planner(store, forced)
        for _, run_flow in flows:
            run_flow(planner, cfg, refs)
        run_claims(planner, cfg)
        rows += planner.rows
    return rows


@dataclass
class _Planner:
    """Stands in for :class:`Runner` to plan the reasoning stages: looks outputs up, runs nothing."""

    store: Store
    force: set[str]
    rows: list[dict] = field(default_factory=list)
    pending: set[str] = field(default_factory=set)  # labels that will run or may run
    forced_labels: set[str] = field(default_factory=set)  # labels that will run because of --force
    results: dict[str, dict] = field(default_factory=dict)  # label -> {"ref": ref or None (will run)}

    def run(self, stage: Stage, section: dict, parents: dict, label: str | None = None,
            parent_labels: list[str] = (), meta: dict | None = None) -> dict | None:
        label = label or stage.name
        ref = self._plan(stage, section, parents, label, parent_labels)
        self.results[label] = {"ref": ref}
        return ref

    def _plan(self, stage: Stage, section: dict, parents: dict, label: str, parent_labels: list[str]) -> dict | None:
        after = ", ".join(dict.fromkeys(parent_labels)) if len(parent_labels) <= 3 else \
            f"{len(parent_labels)} stages: {parent_labels[0]}, {parent_labels[1]}, ..."
        forced_up = [p for p in parent_labels if p in self.forced_labels]
        if forced_up or stage.name in self.force or label in self.force:
            # Forced, or downstream of a forced stage: it runs whatever its key (as in Runner.run).
            self.pending.add(label)
            self.forced_labels.add(label)
            why = f"forced (upstream {forced_up[0]} is forced)" if forced_up else "forced (--force)"
            self.rows.append({"stage": label, "after": after, "status": "run", "key": "?", "why": why})
            return None
        waiting = [p for p in parent_labels if p in self.pending]
        if waiting or any(v is None for v in parents.values()):
            self.pending.add(label)
            self.rows.append({"stage": label, "after": after, "status": "pending", "key": "?",
                              "why": _waiting(waiting or ["stage"])})
            return None
        key = stage.key(section, parents)
        ref, why = self.store.lookup(stage.name, key)
        if ref is None:
            why += _diff_from_latest(self.store, stage, section, parents) + _resumes(self.store, stage.name, key)
            self.pending.add(label)
        self.rows.append({"stage": label, "after": after, "status": "cached" if ref else "run", "key": key, "why": why})
        return ref.model_dump() if ref else None


def _waiting(upstream: list[str]) -> str:
    return (f"upstream {', '.join(upstream[:3])} runs first; this stage reruns only if the data it reads "
            f"from there changes (its key is known only then)")


def _resumes(store: Store, stage: str, key: str) -> str:
    """A stage killed after a checkpoint resumes from it (RL training keeps them in .work/)."""
    ckpts = sorted((store.root / ".work" / stage / key / "checkpoints").glob("step-*"))
    return f"; resumes from step {int(ckpts[-1].name.split('-')[1])}" if ckpts else ""


def _diff_from_latest(store: Store, stage: Stage, section: dict, parents: dict) -> str:
    """Why the key moved since the stage's last output: which config keys, which input files,
    code, or which upstream data the stage reads."""
    last = store.latest_manifest(stage.name)
    if last is None:
        return " (never run in this workspace)"
    new, old = tracking.flatten(section), tracking.flatten(last["config"])
    changed = sorted({k for k in new if old.get(k) != new[k]} | {k for k in old if k not in new})
    files = [k.removeprefix("files.") for k in changed if k.startswith("files.")]
    keys = [k for k in changed if not k.startswith("files.")]
    reasons = []
    if files:
        reasons.append("input file changed: " + ", ".join(files))
    if keys:
        reasons.append("config changed since the last run: " + ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else ""))
    if last["code_version"] != stage.code_version:
        reasons.append("code changed since the last run")
    moved = [k for k, v in parents.items()
             if last["parents"].get(k, {}).get("digest") != stage.parent_digest(k, v)]
    if moved:
        reasons.append("upstream data it reads changed: " + ", ".join(moved))
    return f" ({'; '.join(reasons)})" if reasons else ""


class StageFailed(RuntimeError):
    """A stage failed: names the stage and the cause in one line (the traceback is in the log)."""

    def __init__(self, label: str, cause: BaseException):
        first = (str(cause).strip().splitlines() or [""])[0]
        super().__init__(f"stage {label} failed: {type(cause).__name__}: {first}")
        self.label, self.cause = label, cause


def run_meta(cfg: PipelineConfig, flow: str, **extra) -> dict:
    """What a user groups and filters child runs by in the MLflow UI, the same keys in every
    flow: flow, method, seed, model (the label of the model the stage reads or trains) and its
    source. Logged as params and tags of each child run (see tracking.log_stage)."""
    return {"flow": flow, "method": "base", "seed": cfg.seed, "model": cfg.base_stage(),
            "model_source": cfg.model.source, **extra}


@dataclass
class Runner:
    """Runs stages inside a flow: cache check, Prefect task, MLflow child run, bookkeeping."""

    store: Store
    client: object
    experiment_id: str
    parent_run_id: str
    force: set[str]
    meta: dict = field(default_factory=dict)  # run_meta() of the flow; a stage's meta updates it
    results: dict[str, dict] = field(default_factory=dict)  # label -> {state, ref, seconds, stage}
    recomputed: set[str] = field(default_factory=set)  # labels that ran because forced

    def run(self, stage: Stage, section: dict, parents: dict[str, dict], label: str | None = None,
            parent_labels: list[str] = (), meta: dict | None = None) -> dict:
        logger = get_run_logger()
        label = label or stage.name
        key = stage.key(section, parents)
        verified, why = self.store.lookup(stage.name, key)
        forced = stage.name in self.force or label in self.force or any(p in self.recomputed for p in parent_labels)
        # Refresh Prefect's cache record when forced, or when the output behind it is gone or corrupt.
        refresh = forced or verified is None
        t0 = time.time()
        state = stage.task.with_options(
            refresh_cache=refresh, result_storage=workspace.prefect_results(), task_run_name=label,
        )(key=key, config=section, parents=parents, force=forced, return_state=True)
        try:
            ref = state.result()  # raises if the stage failed
        except Exception as e:
            stage_line(label, "Failed", time.time() - t0, type(e).__name__)
            raise StageFailed(label, e) from e
        cached = state.name == "Cached" or bool(ref.get("reused"))
        if forced:
            self.recomputed.add(label)
        self.results[label] = {"state": "Cached" if cached else state.name, "ref": ref,
                               "seconds": time.time() - t0, "stage": stage.name}
        if refresh and verified is None and why != "no output for this key":
            logger.warning(f"{label}: recomputed because the stored {why}")
        tracking.log_stage(self.client, self.experiment_id, self.parent_run_id, self.store.manifest(ref),
                           self.store.resolve(ref), cached=cached, run_name=label,
                           meta={**self.meta, "stage": stage.name, **(meta or {})})
        r = self.results[label]
        logger.info(f"{label}: {r['state']} ({r['seconds']:.1f} s) -> {self.store.resolve(ref)}")
        stage_line(label, r["state"], r["seconds"], str(self.store.resolve(ref)))
        return ref


@flow(name="entroflow-pipeline", log_prints=True)
def pipeline(config_path: str, overrides: list[str] | None = None, force: list[str] | None = None) -> dict:
    """Run the spine (and the reasoning comparison when configured). Returns
    {label: {"state", "ref", "seconds", "stage"}, "report_path", "mlflow_parent_run_id"}."""
    cfg = load_config(config_path, overrides or [])
    d = cfg.model_dump(mode="json")
    forced = forced_closure(cfg, force or [])
    store = Store(workspace.store_root())
    store.clean_tmp()
    c = tracking.client()
    exp_id = tracking.ensure_experiment(c, cfg.experiment)
    run_name = f"{cfg.name}-{flow_run.get_name() or 'local'}"
    changes = [*map(_override_without_key, overrides or []), *(f"--force {f}" for f in force or [])]
    if changes and len(" ".join(changes)) <= 60:  # the overrides are part of what a run is: show them
        run_name += f" [{' '.join(changes)}]"
    parent = tracking.start_parent(
        c, exp_id, run_name=run_name, flow_run_id=flow_run.get_id() or "local",
        params=tracking.flatten(_without_keys(d)),
        tags={"config_hash": provenance.config_hash(d), "config_name": cfg.name, "config_path": str(Path(config_path)),
              "git_commit": provenance.git_commit(), "entroflow_version": provenance.package_versions()["entroflow"],
              "prefect.flow_run_name": flow_run.get_name() or "", "overrides": " ".join(changes),
              "mlflow.note.content": f"`entroflow run {config_path}` " + " ".join(
                  [*(f"--set {_override_without_key(o)}" for o in overrides or []), *(f"--force {f}" for f in force or [])]),
              **tracking.process_tags()},
    )
    runner = Runner(store, c, exp_id, parent, forced, meta=run_meta(cfg, "pipeline"))
    refs: dict[str, dict] = {}
    status = "FAILED"
    out: dict = {}
    try:
        for node in DAG:
            if node.enabled(cfg):
                ups = {alias: upstream(cfg, up) for alias, up in node.parents.items()}
                parents = {alias: refs[up] for alias, up in ups.items() if up in refs}
                refs[node.stage.name] = runner.run(node.stage, node.section(cfg, d), parents,
                                                   parent_labels=list(ups.values()))
        if cfg.rl is not None:
            from flows.reasoning import run_reasoning

            out.update(run_reasoning(runner, cfg, refs))
        if cfg.watermark is not None:
            from flows.watermark import run_watermark

            out.update(run_watermark(runner, cfg, refs))
        if cfg.ood is not None:
            from flows.ood import run_ood

            out.update(run_ood(runner, cfg, refs))
        if cfg.unlearning is not None:
            from flows.unlearning import run_unlearning

            out.update(run_unlearning(runner, cfg, refs))
        run_claims(runner, cfg)
        status = "FINISHED"
    finally:
        summary = {}
        if "evaluate" in refs:
            summary = {k: v for k, v in store.manifest(refs["evaluate"])["metrics"].items() if "/" not in k}
        for k in ("comparison_metrics", "watermark_metrics", "ood_metrics", "unlearning_metrics"):
            summary.update(out.get(k, {}))
        summary.update({f"seconds/{k}": v["seconds"] for k, v in runner.results.items()})
        summary["stages_cached"] = sum(v["state"] == "Cached" for v in runner.results.values())
        summary["stages_total"] = len(runner.results)
        tracking.finish_parent(c, parent, status, summary)
    reports = [("", refs.get("report")), ("", runner.results.get("claims", {}).get("ref")),
               ("reasoning", runner.results.get("compare", {}).get("ref")),
               ("watermark", runner.results.get("watermark_compare", {}).get("ref")),
               ("ood", runner.results.get("ood_compare", {}).get("ref")),
               ("unlearning", runner.results.get("unlearn_compare", {}).get("ref"))]
    published = _publish(store, [(k, v) for k, v in reports if v], workspace.home() / "reports" / cfg.name,
                         f"{time.strftime('%Y%m%d-%H%M%S')}-{flow_run.get_name() or 'local'}")
    for name, key in (("report.md", "report_path"), ("claims.md", "claims_path"),
                      ("comparison.md", "comparison_path"), ("watermark.md", "watermark_path"),
                      ("ood.md", "ood_path"), ("unlearning.md", "unlearning_path")):
        if name in published:
            out[key] = str(published[name])
    return {**runner.results, **out, "mlflow_parent_run_id": parent}


def _without_keys(d: dict) -> dict:
    """The config as MLflow sees it: watermark keys replaced by their fingerprints (keys.py)."""
    if not d.get("watermark"):
        return d
    from entroflow.watermark.keys import fingerprint

    wm = {**d["watermark"], **{k: fingerprint(d["watermark"][k]) for k in ("key", "other_key")}}
    return {**d, "watermark": wm}


def _override_without_key(item: str) -> str:
    """A ``--set`` as MLflow shows it: a watermark key's value becomes its fingerprint."""
    key, _, value = item.partition("=")
    if key.strip() in ("watermark.key", "watermark.other_key") and value.strip().lstrip("-").isdigit():
        from entroflow.watermark.keys import fingerprint

        return f"{key}={fingerprint(int(value))}"
    return item


def run_claims(runner, cfg: PipelineConfig) -> None:
    """The run's one claims table, from each flow's compare stage that ran (entroflow/claims.py)."""
    ran = [(flow, label) for flow, label in (("reasoning", "compare"), ("watermark", "watermark_compare"),
                                             ("ood", "ood_compare"), ("unlearning", "unlearn_compare"))
           if label in runner.results]
    if ran:
        from tasks.claims import claims

        runner.run(claims, {"title": cfg.report.title, "flows": sorted(flow for flow, _ in ran)},
                   {flow: runner.results[label]["ref"] for flow, label in ran}, label="claims",
                   parent_labels=[label for _, label in ran],
                   meta=run_meta(cfg, "pipeline", method="all", model="all"))


def _publish(store: Store, refs: list[tuple[str, dict]], root: Path, run_dir: str) -> dict[str, Path]:
    """Copy this run's reports (Markdown + plots; ``""``: the spine report and the claims table,
    ``"reasoning"``/``"watermark"``: the flows' comparisons) to ``reports/<config>/<run>/``, and
    point ``reports/<config>/latest`` at it. Returns {Markdown file name: published path}.

    Each run gets its own folder, so two runs of one config (say with different overrides) never
    mix. The folder is filled under a temporary name and renamed into place, and ``latest`` is a
    symlink swapped with one rename: a killed run leaves no half-copied report behind.
    """
    if not refs:
        return {}
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{run_dir}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    found: dict[str, Path] = {}
    for sub, ref in refs:
        dest = tmp / sub
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(store.resolve(ref).iterdir()):
            if f.suffix in (".md", ".png"):
                shutil.copyfile(f, dest / f.name)
                if f.suffix == ".md":
                    found[f.name] = root / run_dir / sub / f.name
    os.rename(tmp, root / run_dir)
    link = root / f".latest-{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(run_dir, target_is_directory=True)
    os.replace(link, root / "latest")
    for stale in root.glob(".tmp-*"):  # left by killed runs (their pid is gone)
        if not pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    return found
