"""The features the conformance suite judges: one scoreboard row each.

A platform's declaration claims features by these ids (``"sampling.*"`` claims
a whole suite). The ids are the contract between plugins and the harness, so
renaming one is a breaking change for every declaration.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    id: str
    title: str
    #: the suite whose tests judge it, where that is not the id's own suite
    judged_in: str = ""

    @property
    def suite(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def judging_suite(self) -> str:
        return self.judged_in or self.suite


_FEATURES = [
    Feature("registration.entry_point", "entry point loads and names the platform class"),
    Feature("registration.selected", "selected: current_platform is the plugin's class"),
    Feature("registration.default", "no selection: active or inactive as declared"),
    # the line is looked for in the log of the server that the server suite starts
    Feature("registration.activation_log", "activation log line at startup", judged_in="server"),
    Feature("correctness.greedy_fp32", "greedy ids equal transformers (fp32)"),
    Feature("correctness.logprobs", "sample and prompt logprobs close to transformers"),
    Feature("correctness.bf16", "bfloat16 top-1 agrees with fp32 (teacher forced)"),
    Feature("correctness.fp16", "float16 top-1 agrees with fp32 (teacher forced)"),
    Feature("correctness.derived", "a checkpoint the plugin writes (e.g. W8A8): top-1 agrees "
            "with its fp32 source (teacher forced)"),
    Feature("sampling.seed", "seeded sampling reproduces; seeds differ"),
    Feature("sampling.temperature", "temperature departs from greedy"),
    Feature("sampling.top_k", "top_k"),
    Feature("sampling.top_p", "top_p"),
    Feature("sampling.min_p", "min_p"),
    Feature("sampling.penalties", "repetition, frequency and presence penalties"),
    Feature("sampling.stop", "stop strings and stop token ids"),
    Feature("sampling.min_tokens", "min_tokens and ignore_eos"),
    Feature("sampling.logprobs", "logprobs count and ranks"),
    Feature("sampling.n", "n completions per prompt"),
    Feature("sampling.beam_search", "LLM.beam_search and the server's use_beam_search equal "
            "beam search on transformers (fp32)"),
    Feature("engine.prefix_caching", "prefix cache hit, output unchanged"),
    Feature("engine.chunked_prefill", "chunked prefill, output unchanged"),
    Feature("engine.preemption", "preemption under KV pressure, output unchanged"),
    Feature("engine.abort", "abort frees the request, others unchanged"),
    Feature("engine.concurrency", "48 concurrent requests equal one by one"),
    Feature("inputs.prompt_embeds", "prompt_embeds give transformers' greedy ids of the same "
            "tokens (fp32), alone and batched with token prompts"),
    Feature("server.models", "GET /v1/models and /health"),
    Feature("server.completions", "POST /v1/completions"),
    Feature("server.chat", "POST /v1/chat/completions"),
    Feature("server.streaming", "streamed completions and chat equal whole ones"),
    Feature("server.tokenize", "/tokenize and /detokenize round trip"),
    Feature("server.metrics", "/metrics counts requests"),
    Feature("server.echo", "echo: the prompt comes back, alone with max_tokens=0, with its "
            "logprobs"),
    Feature("server.prompt_logprobs", "prompt_logprobs: each prompt token with its logprob "
            "and rank, as echo's logprobs give them"),
    Feature("server.logit_bias", "logit_bias forces a token and bans one"),
    Feature("server.n_streaming", "n sampled completions in one stream: each index's text is "
            "its own tokens, whole, the n apart"),
    Feature("server.responses", "POST /v1/responses, whole and streamed"),
    Feature("robustness.malformed_json", "malformed JSON: 4xx, still serving"),
    Feature("robustness.unknown_model", "unknown model: 404, still serving"),
    Feature("robustness.overlong_prompt", "prompt over max_model_len: 400 naming the limit"),
    Feature("robustness.invalid_params", "invalid sampling parameters: 400 naming the field"),
    Feature("robustness.unservable", "a request the platform cannot serve: 400 with a reason"),
    Feature("robustness.load", "64 concurrent streaming clients, none lost"),
    Feature("robustness.disconnect", "client disconnects mid-stream: KV blocks freed"),
    Feature("structured.json", "JSON schema and JSON object output validates, offline and "
            "served; streamed equals whole"),
    Feature("structured.regex", "regex-constrained output matches"),
    Feature("structured.choice", "choice-constrained output is one of the choices"),
    Feature("structured.grammar", "EBNF-grammar-constrained output parses"),
    Feature("lora.offline", "LoRA adapters: greedy fp32 ids equal transformers + peft; "
            "two adapters and the base model in one batch"),
    Feature("lora.served", "--enable-lora --lora-modules: each adapter served as a model"),
    Feature("lora.runtime_load", "an adapter loaded and unloaded while serving"),
    Feature("tools.named", "a named tool_choice: one call of that tool, arguments valid "
            "against its schema; streamed equals whole"),
    Feature("tools.required", "tool_choice required: calls of the given tools, arguments "
            "valid against their schemas"),
    Feature("tools.auto", "tool_choice auto with the hermes parser: a call in the model's "
            "output comes back parsed; a tool result answered"),
    Feature("model.qwen3", "another architecture: a seeded random Qwen3 (q/k norms), greedy "
            "ids equal transformers (fp32)"),
    Feature("model.sliding_window", "a seeded random Gemma 3 with sliding-window layers of 16 "
            "positions, on prompts past the window: greedy ids equal transformers (fp32)"),
    Feature("model.moe_routed", "a seeded random Qwen3-MoE whose router picks 2 of 8 experts: "
            "greedy ids equal transformers (fp32)"),
    Feature("model.long_context", "a prompt of over 2,000 tokens across many KV blocks: "
            "greedy ids equal transformers (fp32)"),
    Feature("pooling.embed", "LLM.embed on an encoder-only model (all-MiniLM-L6-v2, BERT) "
            "equals transformers with its sentence-transformers pooling (fp32)"),
    Feature("pooling.served", "/v1/embeddings of the encoder-only model equals the same "
            "reference (fp32)"),
    Feature("pooling.decoder", "the default (decoder) model run as an embedder (runner "
            "pooling): its last token's normalised hidden state, as transformers gives it"),
    Feature("spec_decode.ngram", "n-gram speculative decoding: greedy ids equal transformers "
            "(fp32) beside a sampled request, drafts accepted"),
    Feature("parallel.tp2", "tensor parallel 2: greedy ids equal transformers (fp32)"),
]

FEATURES: dict[str, Feature] = {f.id: f for f in _FEATURES}
SUITES: list[str] = list(dict.fromkeys(f.suite for f in _FEATURES))


def expand(patterns: list[str], where: str) -> set[str]:
    """Feature ids named by ``patterns``; ``suite.*`` names a whole suite.

    ``vllm.*`` ids (vLLM's own tests, see :mod:`vllm_harness.vllm_tests`) are
    accepted as they are.
    """
    out: set[str] = set()
    for pattern in patterns:
        if pattern.endswith(".*") and pattern[:-2] in SUITES:
            out.update(f for f in FEATURES if f.startswith(pattern[:-1]))
        elif pattern in FEATURES or pattern.startswith("vllm."):
            out.add(pattern)
        else:
            known = ", ".join([*SUITES, *FEATURES])
            raise ValueError(f"{where}: unknown feature {pattern!r}; known: {known}")
    return out
