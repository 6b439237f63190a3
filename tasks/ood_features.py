"""Stage ``ood_features``: one model's per-layer features of the OOD evaluation's texts
(entroflow/ood/suites.py: ID fit/val prompts, ID controls, OOD suites), every layer from one
forward pass per batch, streamed to ``features.parquet`` (entroflow/ood/features.py). The ID
``val`` rows' logit-lens distributions, which the layer selection reads, go to
``val_probs.safetensors``."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from entroflow import model as model_lib
from entroflow.data import tables
from entroflow.ood import detectors, features, suites
from entroflow.progress import progress_bar
from tasks._stage import StageOutput, stage


@stage("ood_features", code=[features, suites, detectors, model_lib, tables], main_table="features.parquet",
       reads={"generate_data": suites.OOD_FILES})
def ood_features(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    f, run = config["features"], config["runtime"]
    model, tokenizer = model_lib.load_model(model_lib.resolve_model_dir(parents["model"]), run["dtype"], run["device"])
    rows = suites.build_rows(parents["generate_data"], config["seed"], f["fit_per_domain"], f["val_per_domain"])
    t0 = time.time()
    with progress_bar(f"ood_features {config['model']}", total=len(rows), unit="seq") as advance:
        info = features.extract(model, tokenizer, rows, out.dir / "features.parquet", f["pooling"], f["batch_size"],
                                f["max_tokens"], keep_probs=lambda r: r["split"] == "val", top_m=f["top_m"],
                                progress=advance)
    seconds = time.time() - t0
    if info["probs"] is not None:
        # float16 keeps the file small (a 49k vocabulary x 31 layers); the entropy it feeds is a
        # mean over hundreds of rows, far coarser than half precision.
        save_file({"probs": info["probs"].astype(np.float16)}, str(out.dir / "val_probs.safetensors"),
                  metadata={"ids": ",".join(info["prob_ids"])})
    by_split = {s: sum(r["split"] == s for r in rows) for s in ("fit", "val", "test")}
    out.log(layers=info["layers"], hidden_size=info["hidden_size"], rows=info["rows"], tokens=info["tokens"],
            seconds=seconds, sequences_per_s=info["rows"] / max(seconds, 1e-9),
            **{f"rows_{k}": v for k, v in by_split.items()})
