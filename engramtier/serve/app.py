"""The HTTP face of the server: OpenAI's completions API, /health and Prometheus /metrics, on Starlette.

    POST /v1/completions   prompt (a string or a list of strings), max_tokens (default 16), temperature
                           (default 1; 0 is greedy), top_k (vLLM's extension; -1 or 0: every token),
                           ignore_eos (vLLM's: keep going past the end-of-text token), seed, stream
                           (server-sent events in OpenAI's chunk format, then ``[DONE]``),
                           stream_options.include_usage; n, best_of, top_p, echo, logprobs, stop and the
                           penalties are accepted only at their defaults
    GET  /v1/models        the one model served
    GET  /health           200 while the engine runs, 503 once it fails or shuts down
    GET  /metrics          Prometheus text format (`engramtier.serve.metrics`)

A bad request gets a 400 with OpenAI's JSON error (``{"error": {"message", "type", "param", "code"}}``),
an unknown model a 404, a full queue a 429 (with Retry-After), a failed or stopping engine a 503. A
streaming client that goes away aborts its completions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engramtier.serve.engine import Completion, EngineStopped, QueueFull, ServeEngine

DEFAULT_MAX_TOKENS = 16  # OpenAI's
# parameters accepted only at these values: anything else is a feature this server does not have
FIXED = {"n": 1, "best_of": 1, "top_p": 1, "echo": False, "logprobs": None, "stop": None,
         "presence_penalty": 0, "frequency_penalty": 0, "suffix": None}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_k", "ignore_eos", "seed", "stream", "stream_options", "user", *FIXED}
REFRESH_TIMEOUT_S = 30.0


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind


def error_response(message: str, status: int, kind: str, param: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status, headers)


def build_app(engine: ServeEngine, model_name: str, tokenizer, max_seq_len: int, on_shutdown=None) -> Starlette:
    """The Starlette app over ``engine``; ``on_shutdown`` runs after the engine has stopped."""
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)
            if on_shutdown is not None:
                await asyncio.to_thread(on_shutdown)

    async def completions(request: Request) -> Response:
        try:
            body = await _json_body(request)
            prompts, params = _parse(body, model_name)
            encoded = await asyncio.to_thread(tokenizer.encode_base_batch, prompts)
            for i, ids in enumerate(encoded):
                where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
                if ids.size == 0:
                    raise BadRequest(f"{where} is empty after tokenization; give some text", "prompt")
                if ids.size + params["max_tokens"] > max_seq_len:
                    raise BadRequest(f"{where} ({ids.size} tokens) plus max_tokens {params['max_tokens']} exceeds the "
                                     f"model's {max_seq_len} positions; shorten it or lower max_tokens", "max_tokens")
        except BadRequest as err:
            return error_response(str(err), err.status, err.kind, err.param)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        batch = [Completion(ids, params["max_tokens"], params["temperature"], params["top_k"],
                            params["ignore_eos"], None if params["seed"] is None else params["seed"] + i, loop, events, index=i)
                 for i, ids in enumerate(encoded)]
        try:
            engine.submit(batch)
        except QueueFull as err:
            return error_response(str(err), 429, "rate_limit_exceeded", headers={"Retry-After": "1"})
        except EngineStopped as err:
            return error_response(str(err), 503, "service_unavailable")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        usage = lambda: {"prompt_tokens": sum(c.prompt_ids.size for c in batch),  # noqa: E731
                         "completion_tokens": sum(len(c.generated) for c in batch),
                         "total_tokens": sum(c.prompt_ids.size + len(c.generated) for c in batch)}
        if params["stream"]:
            return StreamingResponse(_stream(engine, batch, events, head, usage, params["include_usage"]),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, reasons = [""] * len(batch), [None] * len(batch)
        while None in reasons:
            index, kind, payload = await events.get()
            if kind == "text":
                texts[index] += payload
            elif kind == "done":
                reasons[index] = payload
            else:
                return error_response(payload, 500, "server_error")
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
        return JSONResponse({**head, "choices": choices, "usage": usage()})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                                         "owned_by": "engramtier", "max_model_len": max_seq_len}]})

    async def health(request: Request) -> Response:
        if engine.healthy:
            return JSONResponse({"status": "ok"})
        return error_response("the engine is not running" + (f": {engine.failure}" if engine.failure else ""), 503,
                              "service_unavailable")

    async def metrics(request: Request) -> Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(engine.refresh()), REFRESH_TIMEOUT_S)
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/v1/completions", completions, methods=["POST"]), Route("/v1/models", models),
              Route("/health", health), Route("/metrics", metrics)]
    return Starlette(routes=routes, lifespan=lifespan)


async def _stream(engine: ServeEngine, batch: list[Completion], events: asyncio.Queue, head: dict, usage,
                  include_usage: bool):
    """OpenAI's completion chunks as server-sent events; the completions are aborted if the client leaves."""
    def chunk(**fields) -> str:
        return f"data: {json.dumps({**head, **fields})}\n\n"

    left = len(batch)
    try:
        while left:
            index, kind, payload = await events.get()
            if kind == "error":
                yield f"data: {json.dumps({'error': {'message': payload, 'type': 'server_error', 'code': 500}})}\n\n"
                return
            done = kind == "done"
            left -= done
            yield chunk(choices=[{"index": index, "text": "" if done else payload, "logprobs": None,
                                  "finish_reason": payload if done else None}])
        if include_usage:
            yield chunk(choices=[], usage=usage())
        yield "data: [DONE]\n\n"
    finally:
        engine.abort(batch)  # the client went away mid-stream (finished completions are left alone)


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"the body is not valid JSON ({err}); send a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object such as {\"prompt\": \"...\", \"max_tokens\": 16}")
    return body


def _parse(body: dict, model_name: str) -> tuple[list[str], dict]:
    """The prompts and the checked parameters of a completions request."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise BadRequest(f"unrecognized request argument supplied: {unknown[0]}", unknown[0])
    for key, default in FIXED.items():
        if key in body and body[key] != default and not (key == "stop" and body[key] in ([], "")):
            raise BadRequest(f"{key} = {body[key]!r} is not supported by this server; leave it out", key)
    if "model" in body and body["model"] != model_name:
        raise BadRequest(f"The model `{body['model']}` does not exist; this server serves `{model_name}`", "model", 404,
                         "not_found_error")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        raise BadRequest("prompt must be a string or a non-empty list of strings", "prompt")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if not _integer(max_tokens) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be an integer >= 1, got {max_tokens!r}", "max_tokens")
    temperature = body.get("temperature", 1.0)
    temperature = 1.0 if temperature is None else temperature
    if not _number(temperature) or not 0 <= temperature <= 2:
        raise BadRequest(f"temperature must be a number in [0, 2], got {temperature!r}", "temperature")
    top_k = body.get("top_k", -1)
    if not _integer(top_k) or top_k < -1:
        raise BadRequest(f"top_k must be an integer >= 1, or -1 or 0 for every token, got {top_k!r}", "top_k")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise BadRequest(f"ignore_eos must be true or false, got {ignore_eos!r}", "ignore_eos")
    seed = body.get("seed")
    if seed is not None and (not _integer(seed) or not 0 <= seed < 2**63):
        raise BadRequest(f"seed must be an integer >= 0, got {seed!r}", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
        raise BadRequest("stream_options must be {\"include_usage\": true|false}", "stream_options")
    if options and not stream:
        raise BadRequest("stream_options is only allowed with stream = true", "stream_options")
    return prompts, {"max_tokens": max_tokens, "temperature": float(temperature), "top_k": max(top_k, 0), "ignore_eos": ignore_eos,
                     "seed": seed, "stream": stream, "include_usage": options.get("include_usage", False)}


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
