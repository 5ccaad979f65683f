"""/metrics in Prometheus' text format: requests, tokens, slots and the waiting queue."""

from __future__ import annotations

from glm4_local.server.engine_pool import EnginePool
from glm4_local.server.scheduler import Scheduler

PREFIX = "glm4_local"


def prometheus_text(scheduler: Scheduler | None) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: float) -> None:
        lines.extend([f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}",
                      f"{PREFIX}_{name} {value:g}"])

    metric("model_loaded", "gauge", "1 once the model is loaded", 0 if scheduler is None else 1)
    if scheduler is None:
        return "\n".join(lines) + "\n"
    c, decoder = scheduler.counters, scheduler.decoder
    metric("requests_total", "counter", "Generation requests accepted", c.requests)
    metric("requests_rejected_total", "counter", "Requests refused because the queue was full", c.rejected)
    metric("requests_cancelled_total", "counter", "Requests whose client went away", c.cancelled)
    metric("prompt_tokens_total", "counter", "Prompt tokens of finished requests", c.prompt_tokens)
    metric("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's cache", c.cached_tokens)
    metric("generated_tokens_total", "counter", "Tokens generated", c.generated_tokens)
    metric("decode_calls_total", "counter", "llama_decode calls (one per step, for every active request)",
           decoder.decode_calls)
    metric("decoded_tokens_total", "counter", "Tokens those calls evaluated", decoder.decoded_tokens)
    metric("decode_seconds_total", "counter", "Time spent in those calls", decoder.decode_seconds)
    metric("drafted_tokens_total", "counter", "Tokens drafted by prompt lookup (speculation)", decoder.drafted_tokens)
    metric("accepted_tokens_total", "counter", "Drafted tokens the model confirmed", decoder.accepted_tokens)
    metric("slots", "gauge", "Sequences decoded together", decoder.slot_count)
    metric("slots_busy", "gauge", "Slots generating now", decoder.active)
    metric("queue_waiting", "gauge", "Requests waiting for a slot", decoder.queued)
    reading = decoder.reading()
    metric("prompt_tokens_reading", "gauge", "Prompt tokens still to read, over the requests reading theirs",
           sum(total - done for done, total in reading))
    if isinstance(decoder, EnginePool):
        lines.extend(_engine_lines(decoder))
    return "\n".join(lines) + "\n"


ENGINE_METRICS = (  # name, kind, help, the field of the engine's status
    ("engine_up", "gauge", "1 while the engine is in use, 0 while it is out", "status"),
    ("engine_busy", "gauge", "Requests running on the engine now", "busy"),
    ("engine_requests_total", "counter", "Requests sent to the engine", "requests"),
    ("engine_failures_total", "counter", "Times the engine was taken out", "failures"),
)


def _engine_lines(pool: EnginePool) -> list[str]:
    """Per engine (`serve --engine`), labelled with its address."""
    lines: list[str] = []
    engines = pool.status()
    for name, kind, help_text, key in ENGINE_METRICS:
        lines.extend([f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"])
        for engine in engines:
            value = (engine[key] == "ok") if key == "status" else engine[key]
            lines.append(f'{PREFIX}_{name}{{engine="{_label(engine["url"])}"}} {value:g}')
    return lines


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
