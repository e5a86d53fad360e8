"""PyTorch forms of the Triton kernels of vLLM's rejection sampler.

Speculative decoding (n-gram, draft models, EAGLE) checks each request's draft
tokens against the target model with these four kernels. Each form takes its
kernel's parameters by name and writes the same outputs: one program per
request in Triton becomes one tensor program over all the batch's draft
tokens here, a token's request and position found from the cumulative counts,
and "accepted so far" from a running count of rejections. Their tests hold
them to vLLM's own kernels run by Triton's interpreter.
"""

from __future__ import annotations

import torch

_MODULE = "vllm.v1.sample.rejection_sampler"
GREEDY_KERNEL = f"{_MODULE}.rejection_greedy_sample_kernel"
RANDOM_KERNEL = f"{_MODULE}.rejection_random_sample_kernel"
EXPAND_KERNEL = f"{_MODULE}.expand_kernel"
RECOVERED_KERNEL = f"{_MODULE}.sample_recovered_tokens_kernel"


def _layout(cu_num: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, ...]:
    """Each token's request and position in it, and each request's count,
    from the inclusive cumulative counts."""
    cu = cu_num.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    requests = torch.arange(cu.numel(), device=cu.device)
    req = torch.repeat_interleave(requests, counts, output_size=num_tokens)
    pos = torch.arange(num_tokens, device=cu.device) - (cu - counts)[req]
    return req, pos, counts


def _write_until_rejected(out: torch.Tensor, req: torch.Tensor, pos: torch.Tensor,
                          counts: torch.Tensor, tokens: torch.Tensor,
                          rejected: torch.Tensor, active: torch.Tensor,
                          bonus: torch.Tensor) -> None:
    """A request's tokens up to and including its first rejection; its bonus
    token after them when none was rejected. Only ``active`` requests."""
    ones = rejected.to(torch.int64)
    per_request = torch.bincount(req, ones, minlength=counts.numel())
    in_earlier_requests = torch.cumsum(per_request, 0) - per_request
    before = torch.cumsum(ones, 0) - ones - in_earlier_requests[req]
    keep = (before == 0) & active[req]
    out[req[keep], pos[keep]] = tokens[keep].to(out.dtype)
    rows = torch.nonzero((per_request == 0) & active).flatten()
    out[rows, counts[rows]] = bonus.reshape(-1)[rows].to(out.dtype)


def rejection_greedy_sample(
    output_token_ids_ptr: torch.Tensor,  # [batch_size, max_spec_len + 1]
    cu_num_draft_tokens_ptr: torch.Tensor,  # [batch_size]
    draft_token_ids_ptr: torch.Tensor,  # [num_tokens]
    target_argmax_ptr: torch.Tensor,  # [num_tokens]
    bonus_token_ids_ptr: torch.Tensor,  # [batch_size]
    is_greedy_ptr: torch.Tensor | None,  # [batch_size]
    max_spec_len: int,
    uniform_probs_ptr: torch.Tensor | None,  # [num_tokens], synthetic mode only
    synthetic_conditional_rates_ptr: torch.Tensor | None,  # [num_speculative_tokens]
    SYNTHETIC_MODE: bool,  # noqa: N803 (the Triton kernel's parameter names)
) -> None:
    """Greedy requests keep draft tokens while they equal the target's argmax
    (in synthetic mode: while a uniform draw stays under the position's rate)."""
    draft = draft_token_ids_ptr.to(torch.int64)
    req, pos, counts = _layout(cu_num_draft_tokens_ptr, draft.numel())
    argmax = target_argmax_ptr.to(torch.int64)
    if SYNTHETIC_MODE:
        rates = synthetic_conditional_rates_ptr[pos]  # type: ignore[index]
        accepted = (uniform_probs_ptr < rates) & (draft >= 0)  # type: ignore[operator]
        tokens = torch.where(accepted, draft, argmax)
        rejected = ~accepted
    else:
        tokens, rejected = argmax, draft != argmax
    active = (torch.ones_like(counts, dtype=torch.bool) if is_greedy_ptr is None
              else is_greedy_ptr.to(torch.bool))
    _write_until_rejected(output_token_ids_ptr, req, pos, counts, tokens, rejected, active,
                          bonus_token_ids_ptr)


def rejection_random_sample(
    output_token_ids_ptr: torch.Tensor,  # [batch_size, max_spec_len + 1]
    cu_num_draft_tokens_ptr: torch.Tensor,  # [batch_size]
    draft_token_ids_ptr: torch.Tensor,  # [num_tokens]
    draft_probs_ptr: torch.Tensor | None,  # [num_tokens, vocab_size]
    target_probs_ptr: torch.Tensor,  # [num_tokens, vocab_size]
    bonus_token_ids_ptr: torch.Tensor,  # [batch_size]
    recovered_token_ids_ptr: torch.Tensor,  # [num_tokens]
    uniform_probs_ptr: torch.Tensor,  # [num_tokens]
    is_greedy_ptr: torch.Tensor,  # [batch_size]
    max_spec_len: int,
    vocab_size: int,
    synthetic_conditional_rates_ptr: torch.Tensor | None,  # [num_speculative_tokens]
    NO_DRAFT_PROBS: bool,  # noqa: N803
    SYNTHETIC_MODE: bool,  # noqa: N803
) -> None:
    """Sampled requests keep a draft token with probability min(1, p/q); the
    first one refused is replaced by its recovered token. A padded draft
    (-1) is always refused."""
    draft = draft_token_ids_ptr.to(torch.int64)
    req, pos, counts = _layout(cu_num_draft_tokens_ptr, draft.numel())
    uniform = uniform_probs_ptr
    if SYNTHETIC_MODE:
        accepted = uniform < synthetic_conditional_rates_ptr[pos]  # type: ignore[index]
    else:
        index = draft.clamp(min=0)[:, None]
        target = target_probs_ptr.gather(1, index)[:, 0]
        if NO_DRAFT_PROBS:
            accepted = target / 1 >= uniform
        else:
            proposal = draft_probs_ptr.gather(1, index)[:, 0]  # type: ignore[union-attr]
            accepted = (proposal > 0) & (target / proposal >= uniform)
    accepted &= draft >= 0
    tokens = torch.where(accepted, draft, recovered_token_ids_ptr.to(torch.int64))
    _write_until_rejected(output_token_ids_ptr, req, pos, counts, tokens, ~accepted,
                          ~is_greedy_ptr.to(torch.bool), bonus_token_ids_ptr)


def expand(
    output_ptr: torch.Tensor,  # [num_tokens]
    input_ptr: torch.Tensor,  # [batch_size]
    cu_num_tokens_ptr: torch.Tensor,  # [batch_size]
    replace_from: int,
    replace_to: int,
    MAX_NUM_TOKENS: int,  # noqa: N803
) -> None:
    """Each request's value repeated over its tokens, ``replace_from`` read as
    ``replace_to``."""
    values = torch.where(input_ptr == replace_from,
                         torch.as_tensor(replace_to, dtype=input_ptr.dtype), input_ptr)
    cu = cu_num_tokens_ptr.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    total = output_ptr.numel()
    output_ptr[:total] = torch.repeat_interleave(values, counts, output_size=total)


def sample_recovered_tokens(
    output_token_ids_ptr: torch.Tensor,  # [num_tokens]
    cu_num_draft_tokens_ptr: torch.Tensor,  # [batch_size]
    draft_token_ids_ptr: torch.Tensor,  # [num_tokens]
    draft_probs_ptr: torch.Tensor | None,  # [num_tokens, vocab_size]
    target_probs_ptr: torch.Tensor,  # [num_tokens, vocab_size]
    inv_q_ptr: torch.Tensor,  # [batch_size, vocab_size]
    vocab_size: int,
    BLOCK_SIZE: int,  # noqa: N803
    NO_DRAFT_PROBS: bool,  # noqa: N803
    USE_FP64_GUMBEL: bool,  # noqa: N803
) -> None:
    """The token a refused draft gives way to: the argmax of max(p - q, 0)
    (p without the draft token when there is no q) times the request's
    exponential draws, the first of equal scores."""
    num_tokens = output_token_ids_ptr.numel()
    req, _, _ = _layout(cu_num_draft_tokens_ptr, num_tokens)
    target = target_probs_ptr[:num_tokens]
    if NO_DRAFT_PROBS:  # a padded draft (-1) leaves p whole
        draft = draft_token_ids_ptr.to(torch.int64)
        rows = torch.nonzero(draft >= 0).flatten()
        prob = target.index_put((rows, draft[rows]), target.new_zeros(()))
    else:
        prob = (target - draft_probs_ptr[:num_tokens]).clamp(min=0.0)  # type: ignore[index]
    score = prob.to(inv_q_ptr.dtype) * inv_q_ptr[req]
    recovered = score.argmax(dim=1).clamp(max=vocab_size - 1)
    output_token_ids_ptr.copy_(recovered.to(output_token_ids_ptr.dtype))


OVERRIDES = {
    GREEDY_KERNEL: rejection_greedy_sample,
    RANDOM_KERNEL: rejection_random_sample,
    EXPAND_KERNEL: expand,
    RECOVERED_KERNEL: sample_recovered_tokens,
}
