"""The HTTP service over the latest materialized models and index: `make serve`.

    python -m wb_pipeline.serve [--host 127.0.0.1] [--port 8000] [--storage DIR] [--models-dir DIR]

- `POST /predict`: a card (form fields `title`, `description`, `characteristics`, `brand`, `price`,
  `nm`, and a `photo` file; or a JSON object of the fields, without a photo): every label's class,
  probability and the model that predicted it;
- `POST /similar?top=10`: the same card: its nearest catalogue products and the ones it would share a
  duplicate group with;
- `GET /search?q=...&top=10`, `POST /search` (a `photo` file): what `python -m wb_pipeline.search` prints;
- `GET /health`: the materialization served (run ids, times, model fingerprints); 503 while there is none.

A thin layer: the card checks, the vectors, the predictions (`core.models.prediction.predict_products`,
the path of `test_predictions` and `drop_predictions`) and the duplicate rule live in
`wb_pipeline.core.serving`; search is `wb_pipeline.search.open_searcher`'s `Searcher`. Storage and
encoders are the code location's (`wb_pipeline.settings`, `build_definitions`), the same `make run` uses.

A newer materialization is noticed on the next request (a few `stat` calls: `materialization_stamp`),
loaded in a background thread once its files have stopped changing and form a complete set, and
swapped in whole; until then the old one answers. Bad input is a 4xx with a `detail` message: 413 for a
body over `WB_PIPELINE_SERVE_MAX_UPLOAD_BYTES` or a photo with too many pixels, 415 for a content type
other than multipart, form or JSON, 422 for a card the pipeline would reject.
"""

import argparse
import logging
import sys
import threading
import time
from collections.abc import Sequence

from wb_pipeline import settings
from wb_pipeline.search import NotMaterialized, open_searcher

log = logging.getLogger("wb_pipeline.serve")

# Assets whose latest materialization's run id /health shows (from the Dagster instance, when there is one).
RUN_ID_ASSETS = ("contrastive_model", "classification_report", "test_predictions", "product_index", "duplicate_groups")


class ServiceState:
    """The bundle being served and the loading of a newer one (one background loader at a time)."""

    def __init__(
        self,
        storage_dir: str | None = None,
        models_dir: str | None = None,
        definitions=None,
        settle_seconds: float = 1.0,
        threads: int = 1,
    ):
        from wb_pipeline.core.serving.bundle import materialization_stamp

        self.layout = settings.layout(storage_dir, models_dir)
        self.models_dir = models_dir
        self._definitions = definitions
        self.settle_seconds = settle_seconds
        self.threads = threads
        self._stamp = materialization_stamp
        self._lock = threading.Lock()
        self.bundle = None
        self.loaded_at: float | None = None
        self.problem: str | None = "not loaded yet"
        self._failed_stamp: tuple | None = None
        self._loader: threading.Thread | None = None

    @property
    def definitions(self):
        if self._definitions is None:
            from wb_pipeline.definitions import build_definitions

            self._definitions = build_definitions(storage_dir=self.layout.base_dir, models_dir=self.models_dir)
        return self._definitions

    def load(self, stamp: tuple) -> None:
        """Load the materialization of `stamp` and swap it in; on failure keep the old one, say why."""
        from wb_pipeline.core.serving.bundle import NotServable, ServingBundle, incomplete_reason

        try:
            problem = incomplete_reason(self.layout, stamp)
            if problem:
                raise NotServable(problem)
            bundle = ServingBundle.load(self.layout, stamp=stamp, **self._bundle_inputs())
            if self._stamp(self.layout) != stamp:
                raise NotServable("the materialization changed while it was loaded (a run is writing it)")
            bundle.info["runs"] = self._run_ids()
            warm_up(bundle)
        except (NotServable, NotMaterialized) as error:
            with self._lock:
                self._failed_stamp, self.problem = stamp, str(error)
            log.warning("not serving the materialization of %s: %s", self.layout.base_dir, error)
            return
        with self._lock:  # requests holding the old bundle finish with it; it is freed after them
            self.bundle, self.loaded_at, self.problem, self._failed_stamp = bundle, time.time(), None, None
        log.info("serving the materialization of %s", self.layout.base_dir)

    def _bundle_inputs(self) -> dict:
        from wb_pipeline.core.data.cleaning import CleaningConfig
        from wb_pipeline.core.data.images import ImageConfig
        from wb_pipeline.core.search.duplicates import DuplicateConfig
        from wb_pipeline.core.text.preprocessing import TextPreprocessingConfig
        from wb_pipeline.core.text.product_text import TextInputs
        from wb_pipeline.defs.config import to_core

        resources = self.definitions.resources
        text, image = resources["text_embedding_settings"], resources["image_embedding_settings"]
        searcher = open_searcher(
            self.layout.base_dir, self.models_dir, "both", self.threads, definitions=self.definitions
        )
        return {
            "searcher": searcher,
            "text_encoder": _threads(resources["text_encoder"], self.threads).build(),
            "image_encoder": _threads(resources["image_encoder"], self.threads).build(),
            "text_inputs": TextInputs(
                fields=text.fields,
                form=text.form,
                description_token_budget=text.description_token_budget,
                preprocessing=to_core(TextPreprocessingConfig, resources["text_preprocessing_settings"]),
            ),
            "image_config": ImageConfig(channel_order=image.channel_order),
            "draft_decode": image.draft_decode,
            "cleaning": CleaningConfig(),
            "duplicates": DuplicateConfig(),
        }

    def _run_ids(self) -> dict:
        """The run id and time of each served asset's latest materialization in the Dagster instance
        (`DAGSTER_HOME`); empty when there is no instance (the storage dir alone is served)."""
        try:
            import dagster as dg

            with dg.DagsterInstance.get() as instance:
                runs = {}
                for asset in RUN_ID_ASSETS:
                    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
                    if event is not None:
                        runs[asset] = {"run_id": event.run_id, "timestamp": event.timestamp}
                return runs
        except Exception as error:  # no instance configured, or another one: the service still serves
            return {"unavailable": str(error).split("\n")[0][:200]}

    def current(self):
        """The bundle to answer with (a newer complete materialization is loaded in the background);
        NotServable with the reason when there is none."""
        from wb_pipeline.core.serving.bundle import NotServable

        stamp = self._stamp(self.layout)
        with self._lock:
            bundle, changed = self.bundle, (self.bundle is None or stamp != self.bundle.stamp)
            start = changed and stamp != self._failed_stamp and (self._loader is None or not self._loader.is_alive())
            if start:
                self._loader = threading.Thread(target=self._settle_and_load, args=(stamp,), daemon=True)
                self._loader.start()
            problem = self.problem
        if bundle is None:
            raise NotServable(problem or "loading the materialization")
        return bundle

    def _settle_and_load(self, stamp: tuple) -> None:
        """Wait until the files stop changing (a run writes its assets one after another), then load."""
        while True:
            time.sleep(self.settle_seconds)
            now = self._stamp(self.layout)
            if now == stamp:
                break
            stamp = now
        if self.bundle is None or stamp != self.bundle.stamp:
            self.load(stamp)

    def wait_loaded(self, timeout: float) -> None:
        """Block until the first load finished (used at start-up and by tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.current()
                if self._loader is None or not self._loader.is_alive():
                    return
            except Exception:
                if self._loader is not None and not self._loader.is_alive():
                    return
            time.sleep(0.05)


def _threads(resource, threads: int):
    """The encoder resource with `threads` onnxruntime intra-op threads unless it sets its own: a card's
    text and photo are encoded at once in two threads, each on its own core, instead of two thread pools
    of every core fighting over them (the vectors do not depend on the thread count: tested)."""
    if resource.num_threads is not None:
        return resource
    fields = {name: getattr(resource, name) for name in type(resource).model_fields}
    return type(resource)(**{**fields, "num_threads": threads})


def warm_up(bundle) -> None:
    """One prediction before the bundle is swapped in: the first onnxruntime / LightGBM calls allocate."""
    from wb_pipeline.core.serving.cards import ProductCard

    card = ProductCard(
        nm="warm-up", title="Платье женское летнее", description="Хлопок", characteristics=None, brand=None, price=None
    )
    bundle.predict(card)
    bundle.similar(card, 1)


def create_app(state: ServiceState, limits=None):
    """The FastAPI app over `state` (`limits`: `core.serving.cards.ServingLimits`)."""
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette import formparsers
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    from wb_pipeline.core.search.query import QueryError, clean_query_text
    from wb_pipeline.core.serving.bundle import NotServable
    from wb_pipeline.core.serving.cards import CARD_FIELDS, CardError, ServingLimits, parse_card

    limits = limits or ServingLimits(max_upload_bytes=settings.serve_max_upload_bytes())
    # Uploads stay in memory (never spooled to a temporary file): the body limit bounds them.
    formparsers.MultiPartParser.spool_max_size = limits.max_upload_bytes + 1
    models = anyio.CapacityLimiter(2)  # model work at a time: more only thrashes 2 cores
    app = FastAPI(title="wb_pipeline", version="1", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)

    @app.exception_handler(CardError)
    async def card_error(request, error: CardError):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(QueryError)
    async def query_error(request, error: QueryError):
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(NotServable)
    async def not_servable(request, error: NotServable):
        return JSONResponse({"detail": f"nothing to serve: {error}"}, status_code=503, headers={"Retry-After": "5"})

    async def read_card(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        photo = None
        if kind == "application/json":
            try:
                fields = await request.json()
            except ValueError as error:
                raise CardError(f"the body is not valid JSON: {str(error)[:120]}", 400) from None
            if not isinstance(fields, dict):
                raise CardError("the JSON body must be an object of card fields", 400)
            if any(isinstance(v, (dict, list)) for k, v in fields.items() if k != "price"):
                raise CardError("card fields must be text (characteristics: the WB JSON list as a string)")
        elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            fields = {}
            try:
                form = await request.form(max_files=1, max_fields=len(CARD_FIELDS) + 1)
            except Exception as error:  # starlette's MultiPartException / a malformed body
                raise CardError(f"the form cannot be read: {str(error)[:160]}", 400) from None
            for key, value in form.multi_items():
                if key in fields or (key == "photo" and photo is not None):
                    raise CardError(f"field {key!r} given twice", 422)
                if key == "photo":
                    if not isinstance(value, UploadFile):
                        raise CardError("field 'photo' must be a file upload (multipart), not text")
                    photo = await value.read()
                    if not photo:
                        raise CardError("the photo is empty (0 bytes)")
                elif isinstance(value, UploadFile):
                    raise CardError(f"field {key!r} must be text, not a file")
                else:
                    fields[key] = value
        else:
            raise CardError(
                f"content type {kind or 'none'!r} is not accepted: send multipart/form-data (with a photo), "
                "application/x-www-form-urlencoded or application/json",
                415,
            )
        return parse_card(fields, photo, limits)

    def top_of(request: Request) -> int:
        raw = request.query_params.get("top", "10")
        try:
            top = int(raw)
        except ValueError:
            raise CardError(f"top must be a whole number, got {raw[:20]!r}") from None
        if not 1 <= top <= limits.max_top:
            raise CardError(f"top must be between 1 and {limits.max_top}, got {top}")
        return top

    async def in_thread(function, *args):
        async with models:
            return await run_in_threadpool(function, *args)

    @app.post("/predict")
    async def predict(request: Request):
        bundle = state.current()
        card = await read_card(request)
        table = await in_thread(bundle.predict, card)
        return {
            "nm": card.nm,
            "labels": [
                {
                    "label": row.label,
                    "predicted": row.predicted,
                    "probability": None if row.probability != row.probability else float(row.probability),
                    "model": row.model,
                    "status": row.status,
                    "reason": row.reason,
                }
                for row in table.itertuples()
            ],
        }

    @app.post("/similar")
    async def similar(request: Request):
        bundle = state.current()
        top = top_of(request)
        card = await read_card(request)
        neighbours, duplicates = await in_thread(bundle.similar, card, top)
        return {
            "nm": card.nm,
            "space": bundle.searcher.space,
            "similar": _records(neighbours),
            "duplicates": _records(duplicates),
        }

    @app.get("/search")
    async def search_text(request: Request):
        bundle = state.current()
        top = top_of(request)
        query = request.query_params.get("q")
        clean_query_text(query)  # an empty or over-long query: 422 before any model runs
        results = await in_thread(bundle.searcher.search_text, query, top)
        return {"space": bundle.searcher.space, "results": _records(results)}

    @app.post("/search")
    async def search_photo(request: Request):
        bundle = state.current()
        top = top_of(request)
        card = await read_card(request)
        if card.photo is None or card.title or card.description:
            raise CardError("POST /search takes one 'photo' file (a text query is GET /search?q=...)")

        def run():
            from wb_pipeline.core.search.spaces import query_vector
            from wb_pipeline.core.serving.cards import decode_photo

            searcher = bundle.searcher
            searcher._check_modality("image")
            photo = decode_photo(card.photo, searcher.image_config, bundle.min_decode_side)
            encoded = searcher.image_encoder.encode([photo])
            vector = query_vector(
                searcher.space, image_vector=encoded, joint_model=searcher.joint_model, **searcher._dims()
            )
            return searcher.top(vector, top)

        return {"space": bundle.searcher.space, "results": _records(await in_thread(run))}

    @app.get("/health")
    async def health():
        try:
            bundle = state.current()
        except NotServable as error:
            return JSONResponse({"status": "unavailable", "detail": str(error)}, status_code=503)
        return {
            "status": "ok",
            "loaded_at": state.loaded_at,
            "pending": state.problem,
            "serving": bundle.info,
        }

    return app


def _records(frame) -> list[dict]:
    import math

    out = []
    for row in frame.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and not math.isfinite(v) else _plain(v)) for k, v in row.items()})
    return out


def _plain(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    return value


class BodyLimit:
    """ASGI middleware: a request body above `max_bytes` gets 413 (by its Content-Length before anything
    is read, or as soon as a chunked body passes the limit), so no upload is held beyond it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                return await _reject(send, 400, "Content-Length is not a number")
            if too_big:
                await self._drain(receive)
                return await _reject(send, 413, self._message(int(length)))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._drain(receive)
                await _reject(send, 413, self._message(seen))

    async def _drain(self, receive) -> None:
        """Read and drop the rest of the body (up to 4x the limit), so the client, still sending, can
        read the 413 instead of a broken pipe; nothing is kept."""
        drained = 0
        while drained <= 4 * self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _message(self, size: int) -> str:
        return f"request body of {size:,}+ bytes, above the {self.max_bytes:,}-byte upload limit"


class _TooLarge(Exception):
    pass


async def _reject(send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wb_pipeline.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--storage", help="storage dir (default: WB_PIPELINE_STORAGE_DIR, else storage/)")
    parser.add_argument(
        "--models-dir", help="converted encoder models (default: WB_PIPELINE_MODELS_DIR, else <storage>/models)"
    )
    args = parser.parse_args(argv)
    import uvicorn
    from threadpoolctl import threadpool_limits

    # BLAS on one thread: a request's matrix products are small (blocks of 64 rows), and concurrent
    # requests already fill the cores; a second BLAS thread per request only spins (measured).
    threadpool_limits(1, user_api="blas")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = ServiceState(args.storage, args.models_dir)
    try:
        state.current()
    except Exception as error:
        log.info("first load: %s", error)
    state.wait_loaded(600)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
