"""The two schedulers of a static-shape device, as subclasses of vLLM's V1 scheduler.

vLLM's scheduler does the work (KV blocks, prefill and decode steps,
preemption, outputs); each subclass only decides which requests it may see
on a step, so every step has a shape the device was compiled for.

- Static batching: graphs for fixed (prompt length, new tokens, batch size)
  shapes, so a batch starts only when the previous one has finished, and only
  with requests that all fit one shape. Requests sent together reach the
  engine one by one, so a batch that could still take more is held briefly
  (``batch_wait_ms``) rather than run padded to its shape and make the rest
  wait a whole batch.
- Continuous batching: a step either prefills one waiting request (its prompt
  padded to a multiple of the block size) or decodes every running request
  (the batch padded to a compiled batch size).
"""

from __future__ import annotations

import time
from typing import Any

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

from vllm_spyre_like import PLUGIN, get_logger
from vllm_spyre_like.envs import (
    SpyreLikeConfig,
    WarmupShape,
    describe,
    fitting,
    unfittable_message,
)

logger = get_logger(__name__)


def select_batch(waiting: list[Request], shapes: list[WarmupShape]
                 ) -> tuple[list[Request], WarmupShape | None]:
    """The requests of the next batch, in queue order, and the shape they fit.

    Walks the queue in order and keeps a request while at least one shape
    still fits the whole group including it (prompt and max_tokens within the
    shape, group size within its batch size). A request that fits no shape
    together with the group so far is left for a later batch; the walk stops
    when no shape could take one more request.
    """
    group: list[Request] = []
    candidates = list(shapes)
    for request in waiting:
        remaining = [s for s in candidates
                     if s.fits(request.num_prompt_tokens, request.max_tokens)
                     and len(group) < s.batch_size]
        if not remaining:
            continue
        group.append(request)
        candidates = remaining
        if all(len(group) >= s.batch_size for s in candidates):
            break
    if not group:
        return [], None
    # the smallest shape the group fits: the least padding on a device
    return group, min(candidates, key=lambda s: (s.prompt_len * s.batch_size, s.new_tokens))


def could_grow(group: list[Request], shapes: list[WarmupShape]) -> bool:
    """Whether some shape that fits every request of ``group`` has room for one more."""
    return any(
        len(group) < s.batch_size
        and all(s.fits(r.num_prompt_tokens, r.max_tokens) for r in group)
        for s in shapes
    )


def _take_waiting(scheduler: Scheduler) -> list[Request]:
    """Empty the waiting queue, returning its requests in queue order."""
    held: list[Request] = []
    while scheduler.waiting:
        held.append(scheduler.waiting.pop_request())
    return held


class StaticBatchingScheduler(Scheduler):
    """vLLM's V1 scheduler, shown only the requests of the current batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = SpyreLikeConfig.of(self.vllm_config)
        self.warmup_shapes = list(config.warmup_shapes)
        #: ids of the requests in the batch being run, and its shape
        self.batch_ids: set[str] = set()
        self.batch_shape: WarmupShape | None = None
        self.batch_wait = config.batch_wait_ms / 1000
        #: when the scheduler began holding a batch that could still grow
        self._held_since: float | None = None
        logger.info("%s static batching with warmup shapes %s; a batch waits up to "
                    "%.0f ms for more requests", PLUGIN, describe(self.warmup_shapes),
                    self.batch_wait * 1000)

    def add_request(self, request: Request) -> None:
        """A request no warmup shape fits is refused here too, should it come past
        the platform's ``validate_request`` (which refuses it up front, as HTTP 400)."""
        if not fitting(self.warmup_shapes, request.num_prompt_tokens, request.max_tokens):
            raise ValueError(unfittable_message(
                self.warmup_shapes, request.num_prompt_tokens, request.max_tokens))
        super().add_request(request)

    def _batch_running(self) -> bool:
        self.batch_ids = {
            rid for rid in self.batch_ids
            if (req := self.requests.get(rid)) is not None and not req.is_finished()
        }
        if not self.batch_ids:
            self.batch_shape = None
        return bool(self.batch_ids) or bool(self.running)

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        # Every waiting request is taken out of the queue, in its order, so the
        # base scheduler sees only the current batch's.
        held = _take_waiting(self)
        if self._batch_running():
            admitted = [r for r in held if r.request_id in self.batch_ids]
        else:
            admitted, self.batch_shape = select_batch(held, self.warmup_shapes)
            if admitted and self._hold(admitted):
                admitted, self.batch_shape = [], None
            self.batch_ids = {r.request_id for r in admitted}
            if admitted:
                logger.debug("%s: new batch of %d requests for shape %s", PLUGIN,
                             len(admitted), self.batch_shape)
        admitted_ids = {id(r) for r in admitted}
        for request in admitted:
            self.waiting.add_request(request)
        try:
            return super().schedule(throttle_prefills)
        finally:
            # The others go back behind what is left of the batch, in order.
            for request in held:
                if id(request) not in admitted_ids:
                    self.waiting.add_request(request)

    def _hold(self, group: list[Request]) -> bool:
        """Whether to hold back ``group`` this step, waiting for more requests.

        Holds while a shape could take more and the wait has not run out. The
        engine loop has nothing else to run then, so a short sleep keeps it
        from spinning (and from starving the thread that receives requests).
        """
        if self.batch_wait <= 0 or not could_grow(group, self.warmup_shapes):
            self._held_since = None
            return False
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        left = self._held_since + self.batch_wait - now
        if left <= 0:
            self._held_since = None
            return False
        time.sleep(min(left, 0.001))
        return True


class ContinuousBatchingScheduler(Scheduler):
    """vLLM's V1 scheduler, shown either one waiting request (a prefill step) or
    the running ones (a decode step), never both."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: a prefill step that could not start (no KV blocks) lets decodes run next
        self._prefill_stalled = False
        logger.info("%s continuous batching: up to %d sequences of %d tokens", PLUGIN,
                    self.max_num_running_reqs, self.max_model_len)

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        if (self.waiting and len(self.running) < self.max_num_running_reqs
                and not self._prefill_stalled):
            output = self._prefill_step(throttle_prefills)
            self._prefill_stalled = not output.num_scheduled_tokens
            return output
        self._prefill_stalled = False
        held = _take_waiting(self)
        try:
            return super().schedule(throttle_prefills)
        finally:
            # after any request the step preempted, in queue order
            for request in held:
                self.waiting.add_request(request)

    def _prefill_step(self, throttle_prefills: bool) -> SchedulerOutput:
        held = _take_waiting(self)
        running, self.running = self.running, []
        self.waiting.add_request(held[0])
        try:
            return super().schedule(throttle_prefills)
        finally:
            self.running = running + self.running
            for request in held[1:]:
                self.waiting.add_request(request)
