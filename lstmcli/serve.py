"""lstmcli serve: a run's model behind HTTP (FastAPI on uvicorn).

    POST /predict  {"texts": ["a wonderful film", ...]}
                -> {"predictions": [{"label": ..., "probability": ..., "probabilities": {...}}, ...]}
    GET  /health   ready, with the backend, labels and limits
    GET  /docs     OpenAPI documentation

The model is loaded and warmed up before the port opens. Concurrent requests are micro-batched: the
first waiting request holds the batch open for at most `wait` seconds or until `size` texts have come,
then one model call on a worker thread labels them all, so the event loop never blocks on inference.
Batches are kept small (8 texts by default): while the worker computes one, the event loop parses and
answers the requests of the others, on the other core. With 32 concurrent clients that doubled the
requests/s of 64-text batches here, which left the event loop and the worker waiting for each other.
Every bad request gets a 4xx answer with a one-line reason in `detail`. SIGTERM stops accepting, answers
the requests in flight, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .errors import UserError
from .predict import Predictor

EXAMPLE = {"texts": ["a wonderful, moving film", "the food was cold and the staff were rude"]}


@dataclass
class Limits:
    texts: int = 256  # per request
    body_bytes: int = 1_000_000  # per request
    characters: int = 100_000  # per text; the model reads only --max-length tokens of it anyway


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, examples=[EXAMPLE["texts"]],
                             description="Texts to label; GET /health tells the limits on their number and size.")


class PredictionOut(BaseModel):
    label: str = Field(description="The most probable class.")
    probability: float = Field(description="Its probability.")
    probabilities: dict[str, float] = Field(description="Every class's probability.")


class PredictResponse(BaseModel):
    predictions: list[PredictionOut] = Field(description="One per text, in the order of the texts.")


class Problem(BaseModel):
    detail: str = Field(description="What is wrong with the request and how to fix it, in one line.")


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class Batcher:
    """Texts of concurrent requests gathered into one call of `predict` (texts -> probabilities) on a worker
    thread; at most `size` texts (a bigger request goes alone) and `wait` seconds of waiting per batch."""

    def __init__(self, predict: Callable[[list[str]], np.ndarray], size: int, wait: float):
        self.predict, self.size, self.wait = predict, size, wait
        self.queue: asyncio.Queue = asyncio.Queue()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="lstmcli-inference")
        self.requests = self.batches = 0  # /health reports them: how much batching happens

    async def submit(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            count, deadline = len(batch[0][0]), loop.time() + self.wait
            while count < self.size:
                try:
                    if self.queue.empty():
                        item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                    else:
                        item = self.queue.get_nowait()
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                count += len(item[0])
            texts = [text for request, _ in batch for text in request]
            self.requests += len(batch)
            self.batches += 1
            try:
                probabilities = await loop.run_in_executor(self.worker, self.predict, texts)
            except Exception as e:  # answered as a 500 to the requests of this batch; the server goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            start = 0
            for request, future in batch:
                if not future.done():  # a client that went away has a cancelled future
                    future.set_result(probabilities[start:start + len(request)])
                start += len(request)


def parse_texts(body: bytes, limits: Limits) -> list[str]:
    """The texts of a /predict body, or BadRequest with the status and a one-line reason."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise BadRequest(400, f'the body is not valid JSON ({reason}): send {{"texts": ["a text", ...]}}.') from None
    if not isinstance(value, dict):
        raise BadRequest(422, f'the body is a JSON {json_type(value)}, not an object: send '
                              '{"texts": ["a text", ...]}.')
    unknown = sorted(set(value) - {"texts"})
    if unknown:
        raise BadRequest(422, f'unknown field {unknown[0]!r}: the body has one field, {{"texts": ["a text", ...]}}.')
    if "texts" not in value:
        raise BadRequest(422, 'the body has no "texts": send {"texts": ["a text", ...]}.')
    texts = value["texts"]
    if not isinstance(texts, list):
        raise BadRequest(422, f'"texts" is a JSON {json_type(texts)}, not a list: send {{"texts": ["a text", ...]}}.')
    if not texts:
        raise BadRequest(422, '"texts" is empty: send at least one text.')
    if len(texts) > limits.texts:
        raise BadRequest(413, f"{len(texts):,} texts in one request, the limit is {limits.texts:,}: split the "
                              "request (or start serve with a higher --max-texts).")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(422, f"texts[{index}] is a JSON {json_type(text)}, not a string: send strings only.")
        if len(text) > limits.characters:
            raise BadRequest(413, f"texts[{index}] has {len(text):,} characters, the limit is {limits.characters:,}: "
                                  "shorten it (or start serve with a higher --max-characters).")
    return texts


def json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to be larger than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body has {int(declared):,} bytes, the limit is {limit:,}: split the request "
                              "(or start serve with a higher --max-bytes).")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"the body has more than {limit:,} bytes, the limit: split the request (or start "
                                  "serve with a higher --max-bytes).")
    return bytes(body)


def create_app(predictor: Predictor, limits: Limits, batch_size: int = 8, wait: float = 0.005):
    """The FastAPI application serving `predictor` (already loaded)."""
    batcher: Batcher | None = None
    labels = predictor.labels

    @contextlib.asynccontextmanager
    async def lifespan(app):
        nonlocal batcher
        batcher = Batcher(predictor.probabilities, batch_size, wait)
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()  # uvicorn has answered every request in flight by now
        batcher.worker.shutdown(wait=True)

    app = FastAPI(title="lstmcli", description=f"Text classifier from {predictor.run.directory}: labels "
                  f"{', '.join(labels)}.", version=predictor.run.record.get("lstmcli_version", ""),
                  lifespan=lifespan)
    problems = {status: {"model": Problem, "description": meaning} for status, meaning in (
        (400, "The body is not valid JSON."), (413, "Too many texts, too long a text, or too large a body."),
        (422, "Valid JSON, but not {\"texts\": [strings]} with at least one text."))}

    @app.post("/predict", response_model=PredictResponse, responses=problems, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema(),
                                                           "example": EXAMPLE}}}})
    async def predict(request: Request):
        """Label texts. Concurrent requests are batched together for the model."""
        try:
            texts = parse_texts(await read_body(request, limits.body_bytes), limits)
        except BadRequest as e:
            return JSONResponse({"detail": str(e)}, status_code=e.status)
        probabilities = await batcher.submit(texts)
        best = probabilities.argmax(axis=1)
        return JSONResponse({"predictions": [
            {"label": labels[b], "probability": float(p[b]), "probabilities": dict(zip(labels, p.tolist()))}
            for b, p in zip(best, probabilities)]})

    @app.get("/health")
    async def health():
        """Ready: the model is loaded and warmed up."""
        return {"status": "ok", "model_dir": str(predictor.run.directory), "backend": predictor.scorer.description,
                "labels": labels, "limits": asdict(limits), "batching": {
                    "texts": batch_size, "wait_ms": wait * 1000, "requests": batcher.requests,
                    "model_calls": batcher.batches}}

    return app


def serve(model_dir, *, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto", quantize: bool = False,
          threads: int = 0, limits: Limits = Limits(), batch_size: int = 8, wait_ms: float = 5.0,
          root_path: str = "", access_log: bool = False, announce: Callable[[str], None] = print) -> None:
    """Load, warm up and serve a run until SIGTERM (then answer what is in flight and return) or Ctrl-C.
    Port 0 takes a free port; the announced address has the real one."""
    import uvicorn

    listener = bind(host, port)  # before loading, so a taken port fails at once
    predictor = Predictor.load(model_dir, backend=backend, quantize=quantize, threads=threads)
    warm_up(predictor, batch_size)
    app = create_app(predictor, limits, batch_size, wait_ms / 1000)
    listener.listen(2048)  # connections from now on wait in the backlog for uvicorn's first accept
    shown_host = f"[{host}]" if ":" in host else host
    announce(f"serving {predictor.run.directory} ({predictor.scorer.description}) on "
             f"http://{shown_host}:{listener.getsockname()[1]}{root_path} (docs: {root_path}/docs)")
    # uvicorn re-raises the SIGTERM it handled once it has drained; with this handler that ends in a
    # normal return (exit code 0) instead of a death by signal.
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    config = uvicorn.Config(app, access_log=access_log, log_level="warning", root_path=root_path,
                            timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[listener])


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        listener.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port (0 picks a "
                        "free one) or --host.") from None
    return listener


def warm_up(predictor: Predictor, batch_size: int) -> None:
    """One full batch of long texts, so the first request pays for no allocation."""
    longest = " ".join(["a"] * min(predictor.run.config.max_length, 512))
    predictor.probabilities([longest] * batch_size)
