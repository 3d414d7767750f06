"""The HTTP side of ``adkd.serve``: a FastAPI app over one :class:`~adkd.serve.session.Session`.

- ``GET /``: the page (plain HTML and JavaScript, no build step): the run's images in a grid with
  their maps, scores and decisions; a threshold slider with live counts on the test and
  validation images beside the histogram; saving the chosen threshold; scoring dropped images
  and server folders.
- ``POST /predict``: one image as the multipart form field ``file`` -> JSON ``score``,
  ``normalized_score`` (0.5 = the threshold), ``decision``, ``threshold`` (``?mask=true``: also
  ``mask_png``, the predicted region at the image's own size, base64 PNG). A line's integration
  calls this.
- ``GET /api/run``, ``GET /api/images``, ``GET /api/overlay/<split>/<index>.png``,
  ``POST /api/threshold``, ``POST /api/score-folder``: what the page reads and writes.

Bad requests get a 4xx with a message that says what to send, never a 500; a body larger than
the upload limit is refused (413) before it is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from adkd.errors import UserError
from adkd.serve.session import SPLITS, Session

MAX_FOLDER_IMAGES = 5000


class Threshold(BaseModel):
    image_threshold: float


class Folder(BaseModel):
    path: str


def create_app(session: Session, folders: bool = True) -> FastAPI:
    """The app over ``session``. ``folders``: whether ``/api/score-folder`` may read folders of
    this machine (only when served to this machine alone)."""
    app = FastAPI(title="adkd.serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return JSONResponse({"detail": f"Bad request to {request.url.path}: {where}"}, status_code=400)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, err: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (Path(__file__).parent / "page.html").read_text()

    @app.get("/api/run")
    def run() -> dict:
        return {**session.describe(), "folders": folders,
                "counts": {split: len(session.images[split]) for split in SPLITS}}  # fmt: skip

    @app.get("/api/images")
    def images() -> list[dict]:
        return [{"split": s.split, "index": s.index, "name": _name(s.path), "label": s.label, "defect": s.defect,
                 "score": s.score} for split in SPLITS for s in session.images[split]]  # fmt: skip

    @app.get("/api/overlay/{split}/{index}.png")
    def overlay(split: str, index: int) -> Response:
        if split not in SPLITS or not 0 <= index < len(session.images[split]):
            raise HTTPException(404, f"No image {split}/{index}: splits are {', '.join(SPLITS)}, indices from 0.")
        return Response(session.overlay_png(split, index), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})  # fmt: skip

    @app.post("/api/threshold")
    def threshold(choice: Threshold) -> dict:
        path = session.choose(choice.image_threshold)
        return {"threshold": session.threshold, "saved": str(path)}

    @app.post("/predict")
    def predict(file: UploadFile | None = File(None), mask: bool = False) -> dict:  # noqa: B008 - FastAPI's form
        if file is None or not hasattr(file, "read"):
            raise HTTPException(400, "POST /predict takes the image as the multipart form field 'file' "
                                     "(curl -F file=@part.png http://host:port/predict).")  # fmt: skip
        data = file.file.read()
        if not data:
            raise HTTPException(400, f"The uploaded file {file.filename!r} is empty.")
        return {"file": file.filename, **session.predict_bytes(data, file.filename or "the upload", mask)}

    @app.post("/api/score-folder")
    def score_folder(folder: Folder) -> dict:
        if not folders:
            raise HTTPException(403, "Scoring folders of the server is off when it serves other machines "
                                     "(--host is not 127.0.0.1): upload the images instead.")  # fmt: skip
        from adkd.predict import expand_inputs

        root = Path(folder.path).expanduser()
        if not root.is_dir():
            raise HTTPException(400, f"{root} is not a folder on the server.")
        paths = expand_inputs([str(root)])[: MAX_FOLDER_IMAGES + 1]
        if not paths:
            raise HTTPException(400, f"No images (png, jpg, bmp, tif) in {root}.")
        if len(paths) > MAX_FOLDER_IMAGES:
            raise HTTPException(400, f"{root} holds more than {MAX_FOLDER_IMAGES} images: use python -m adkd.predict.")
        results, skipped = [], []
        for path in paths:
            try:
                answer = session.predict_bytes(path.read_bytes(), str(path))
            except (UserError, OSError) as err:
                skipped.append(f"{path}: {err}")
                continue
            results.append({"path": str(path.relative_to(root)), **answer})
        return {"folder": str(root), "results": results, "skipped": skipped}

    return app


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


class UploadLimit:
    """Refuses (413) a request body over ``limit`` bytes, by its Content-Length before reading it,
    or while reading one sent without (chunked): nothing larger is ever parsed or spooled to disk.
    (Starlette's form parser has no limit on file parts.)"""

    def __init__(self, app, limit: int) -> None:  # noqa: ANN001
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send, int(length))
        if length is not None:
            return await self.app(scope, receive, send)
        chunks, size = [], 0  # chunked: read it all here, up to the limit, then hand it on
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(send, size, more=True)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send, size: int, more: bool = False) -> None:  # noqa: ANN001
        megabytes = self.limit / 2**20
        detail = (f"Upload too large: {'more than ' if more else ''}{size:,} bytes; this server takes at most "
                  f"{self.limit:,} bytes ({megabytes:g} MB, --max-upload-mb).")  # fmt: skip
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


@contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:  # noqa: ANN001
    """Serve ``app`` from a thread of this process while the block runs; yields its base URL
    (``port=0``: a free port). For tests and benchmarks; ``python -m adkd.serve`` runs uvicorn itself."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"adkd.serve did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
