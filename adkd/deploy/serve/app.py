"""The HTTP side of ``adkd.deploy.serve``: a FastAPI app over one :class:`~adkd.deploy.serve.session.Session`.

- ``GET /``: the page (one HTML file, plain JavaScript, no build step and nothing fetched from
  elsewhere): the run's images in a grid, each opened large with its heat map or region; image
  and pixel threshold sliders with live counts, histogram, ROC and PR curves and recall per
  defect type; saving the chosen thresholds; the decisions as CSV; scoring dropped images and
  server folders; the run's settings.
- ``POST /predict``: one image as the multipart form field ``file`` -> JSON ``score``,
  ``normalized_score`` (0.5 = the threshold), ``decision``, ``threshold``, ``pixel_threshold``
  (``?mask=true``: also ``mask_png``, the predicted region at the image's own size, base64 PNG;
  ``?heatmap=true``: also ``map_size`` and ``map_f32``, the raw anomaly map at the model's size as
  base64 little-endian float32). A line's integration calls this.
- ``GET /api/decisions.csv``: every image of the run with its decision (``?image_threshold=``,
  ``?pixel_threshold=``: at those thresholds instead of the ones in use).
- ``GET /api/run``, ``GET /api/images``, ``GET /api/image/<split>/<index>.png``,
  ``GET /api/map/<split>/<index>``, ``GET /api/truth/<split>/<index>.png``, ``POST /api/threshold``,
  ``POST /api/score-folder``: what the page reads and writes.

Bad requests get a 4xx with a message that says what to send, never a 500; a body larger than
the upload limit is refused (413) before it is parsed, and an image whose header declares more
pixels than ``--max-pixels`` (413) before it is decoded.

What a browser may do is checked too (:class:`Guard`): a request whose Host header is not a name of
this server is refused (a page of another name that resolves to it: DNS rebinding), and so is a
POST sent by a page of another origin.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from adkd.deploy import operating_point
from adkd.deploy.predict import walk_images
from adkd.deploy.serve.session import KEEP, SPLITS, Session, map_bytes
from adkd.errors import ImageTooLargeError, UserError

MAX_FOLDER_IMAGES = 5000
GRACE = 5  # seconds requests in progress are given to finish when the server is asked to stop
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_threshold: Any  # checked by adkd.deploy.operating_point.check_choice, which says what it takes
    pixel_threshold: Any = None  # the same; left out: the pixel threshold in use stays


class Folder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str


def create_app(
    session: Session, folders: bool = True, host: str = "127.0.0.1", allowed_hosts: Iterable[str] = ()
) -> FastAPI:
    """The app over ``session``. ``folders``: whether ``/api/score-folder`` may read folders of
    this machine (only when served to this machine alone). ``host``: the address it is served
    on, whose names a request's Host header must give (:class:`Guard`); ``allowed_hosts``: other
    names it answers to (a reverse proxy's), on any port."""
    app = FastAPI(title="adkd.deploy.serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        Guard,
        names=host_names(host),
        any_address=host in WILDCARD,
        proxied=frozenset(_name_of(h) for h in allowed_hosts),
    )

    @app.exception_handler(ImageTooLargeError)
    async def _too_large(request: Request, err: ImageTooLargeError) -> JSONResponse:
        detail = (
            f"Image {err.name} is {err.size} pixels: this server decodes at most {err.max_pixels:,} pixels "
            f"({err.max_pixels / 1e6:g} megapixels, --max-pixels). Send a smaller image."
        )
        return JSONResponse({"detail": detail}, status_code=413)

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
        return {
            **session.describe(),
            "folders": folders,
            "counts": {split: len(session.images[split]) for split in SPLITS},
            "settings": session.settings(),
        }

    @app.get("/api/images")
    def images() -> list[dict]:
        return [
            {
                "split": s.split,
                "index": s.index,
                "name": _name(s.path),
                "label": s.label,
                "defect": s.defect,
                "score": s.score,
                "map_max": s.map_max,
                "truth": s.mask_path is not None,
            }
            for split in SPLITS
            for s in session.images[split]
        ]

    def check_image(split: str, index: int) -> None:
        if split not in SPLITS or not 0 <= index < len(session.images[split]):
            raise HTTPException(404, f"No image {split}/{index}: splits are {', '.join(SPLITS)}, indices from 0.")

    @app.get("/api/image/{split}/{index}.png")
    def image(split: str, index: int, size: int = 1024) -> Response:
        check_image(split, index)
        longest = min(max(size, 16), 4096)
        return Response(session.image_png(split, index, longest), media_type="image/png", headers=CACHED)

    @app.get("/api/map/{split}/{index}")
    def anomaly_map(split: str, index: int) -> Response:
        """The raw map at the model's size: little-endian float32, row by row (X-Map-Size: WxH)."""
        check_image(split, index)
        values = session.anomaly_map(split, index)
        size = f"{values.shape[1]}x{values.shape[0]}"
        return Response(
            map_bytes(values), media_type="application/octet-stream", headers={**CACHED, "X-Map-Size": size}
        )

    @app.get("/api/truth/{split}/{index}.png")
    def truth(split: str, index: int, size: int = 1024) -> Response:
        check_image(split, index)
        mask = session.truth_png(split, index, min(max(size, 16), 4096))
        if mask is None:
            raise HTTPException(404, f"Image {split}/{index} has no ground-truth mask.")
        return Response(mask, media_type="image/png", headers=CACHED)

    @app.get("/api/decisions.csv")
    def decisions(image_threshold: float | None = None, pixel_threshold: float | None = None) -> Response:
        image_threshold = _query(image_threshold, "image_threshold")
        pixel_threshold = _query(pixel_threshold, "pixel_threshold")
        described = session.describe()
        name = "-".join(str(described[k]) for k in ("method", "dataset", "category") if described[k]) + "-decisions"
        return Response(
            session.decisions_csv(image_threshold, pixel_threshold),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{_safe(name)}.csv"', "Cache-Control": "no-store"},
        )

    @app.post("/api/threshold")
    def threshold(choice: Threshold) -> dict:
        pixel = choice.pixel_threshold if "pixel_threshold" in choice.model_fields_set else KEEP
        path = session.choose(choice.image_threshold, pixel)  # checked before anything is written
        return {"threshold": session.threshold, "pixel_threshold": session.pixel_threshold, "saved": str(path)}

    @app.post("/predict")
    def predict(  # noqa: B008 - FastAPI's form
        file: UploadFile | None = File(None),  # noqa: B008
        mask: bool = False,
        heatmap: bool = False,
    ) -> dict:
        if file is None or not hasattr(file, "read"):
            raise HTTPException(
                400,
                "POST /predict takes the image as the multipart form field 'file' "
                "(curl -F file=@part.png http://host:port/predict).",
            )
        data = file.file.read()
        if not data:
            raise HTTPException(400, f"The uploaded file {file.filename!r} is empty.")
        return {"file": file.filename, **session.predict_bytes(data, file.filename or "the upload", mask, heatmap)}

    @app.post("/api/score-folder")
    async def score_folder(folder: Folder, request: Request) -> dict:
        """Runs in a worker thread; given up when the client goes (the page's Stop, a closed tab)
        or the server is asked to stop, at the next image or folder."""
        if not folders:
            raise HTTPException(
                403,
                "Scoring folders of the server is off when it serves other machines "
                "(--host is not 127.0.0.1): upload the images instead.",
            )
        root = Path(folder.path).expanduser()
        if not root.is_dir():
            raise HTTPException(400, f"{root} is not a folder on the server.")
        given_up = threading.Event()
        work = asyncio.ensure_future(
            run_in_threadpool(_score_folder, session, root, lambda: given_up.is_set() or session.stopping.is_set())
        )
        work.add_done_callback(lambda done: done.cancelled() or done.exception())  # read, when no one waits for it
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=0.2)
                if not work.done() and await request.is_disconnected():
                    given_up.set()
            return work.result()
        finally:
            given_up.set()  # also when this request is cancelled (the server's shutdown)

    return app


def _score_folder(session: Session, root: Path, stop: Callable[[], bool]) -> dict:
    paths = []
    for path in walk_images(root, stop):  # lazily: never more of the tree than the cap needs
        paths.append(path)
        if len(paths) > MAX_FOLDER_IMAGES:
            raise HTTPException(
                400,
                f"{root} holds more than {MAX_FOLDER_IMAGES:,} images (the most one request "
                "scores): name a smaller folder, or use adkd predict.",
            )
    if stop():
        raise HTTPException(503, f"Scoring {root} was stopped (the request was given up, or the server is stopping).")
    if not paths:
        raise HTTPException(400, f"No images (png, jpg, bmp, tif) in {root}.")
    results, skipped = [], []
    for path in paths:
        if stop():
            raise HTTPException(
                503,
                f"Scoring {root} was stopped after {len(results)} images (the request was "
                "given up, or the server is stopping).",
            )
        try:
            answer = session.predict_file(path, str(path))
        except (UserError, OSError) as err:
            skipped.append(f"{path}: {err}")
            continue
        results.append({"path": str(path.relative_to(root)), **answer})
    return {"folder": str(root), "results": results, "skipped": skipped}


CACHED = {"Cache-Control": "max-age=3600"}


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _query(value: float | None, name: str) -> float | None:
    """A threshold given in a query: None, or what a saved one may be (a UserError, 400, otherwise)."""
    return None if value is None else operating_point.check_choice(value, name)


def _safe(name: str) -> str:
    """A file name for a download: letters, digits, '-', '_' and '.' only."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "decisions"


def host_names(host: str) -> frozenset[str]:
    """The names a request may give in its Host header for a server on ``host``: the loopback
    names, ``host`` itself, and for every address (0.0.0.0, ::) this machine's own names."""
    names = {*LOOPBACK, _name_of(host)}
    if host in WILDCARD or _name_of(host) not in LOOPBACK:
        import socket

        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(n for n in names if n)


def _name_of(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host header (``name``, ``name:port``, ``[::1]:port``); None if malformed."""
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    elif ":" in value:
        return None  # an IPv6 address without brackets
    else:
        name, port = value, None
    if port is not None and not (port.isdigit() and len(port) <= 5):
        return None
    return _name_of(name), None if port is None else int(port)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """What a browser may ask of the server, checked before anything else runs:

    - the Host header must name this server: ``names`` (with no port, or the port it listens on);
      with ``any_address`` (served on 0.0.0.0 or ::) any IP address too; ``proxied`` names on any
      port. A web page whose own name was made to resolve to this machine (DNS rebinding) sends
      its name, and is refused (403);
    - a state-changing request (POST) sent by a page of another origin (its ``Origin``, or the
      browser's ``Sec-Fetch-Site``) is refused (403): the threshold is changed, and images and
      folders scored, from the server's own page or by clients that are not browsers (curl, a
      line's integration, which send no Origin).
    """

    SAFE = ("GET", "HEAD", "OPTIONS")

    def __init__(
        self, app, names: frozenset[str], any_address: bool = False, proxied: frozenset[str] = frozenset()
    ) -> None:  # noqa: ANN001
        self.app, self.names, self.any_address, self.proxied = app, names, any_address, proxied

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "http":
            why = self.refusal(scope)
            if why:
                return await _answer(send, 403, why)
        return await self.app(scope, receive, send)

    def refusal(self, scope: dict) -> str | None:
        """Why the request is refused, or None."""
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        server = scope.get("server")
        port = server[1] if server else None
        if len(hosts) > 1:
            return "Refused: the request gives more than one Host header."
        if hosts and not self.host_allowed(hosts[0], port):
            shown = ", ".join(sorted(self.names)) + (" or an IP address" if self.any_address else "")
            return (
                f"Refused: this server answers to {shown} (port {port}), not to Host {hosts[0][:100]!r}. A page "
                "of another name that resolves to this machine may not use it (DNS rebinding). Open it by one "
                "of those names, or start it with --allow-host NAME for a reverse proxy's name."
            )
        if scope["method"] in self.SAFE:
            return None
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in (b"origin", b"sec-fetch-site")}
        site, origin = headers.get("sec-fetch-site"), headers.get("origin")
        if site is not None and site not in ("same-origin", "none"):
            return (
                f"Refused: a {scope['method']} from a page of another site ({origin or site}) may not use this "
                "server: use its own page, or a client that is not a browser (curl)."
            )
        if origin is not None and not self.same_origin(origin, hosts[0] if hosts else None):
            return (
                f"Refused: a {scope['method']} from a page of another origin ({origin[:100]}) may not use this "
                "server: use its own page, or a client that is not a browser (curl)."
            )
        return None

    def host_allowed(self, value: str, port: int | None) -> bool:
        parsed = split_host(value.strip())
        if parsed is None:
            return False
        name, given = parsed
        if name in self.proxied:
            return True
        if given is not None and port is not None and given != port:
            return False
        return name in self.names or (self.any_address and _is_address(name))

    @staticmethod
    def same_origin(origin: str, host: str | None) -> bool:
        """Whether ``origin`` (scheme://name[:port]) is the origin the request was sent to (its Host)."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or host is None:
            return False
        default = 443 if parts.scheme == "https" else 80
        try:
            origin_port = parts.port or default
        except ValueError:
            return False
        target = split_host(host.strip())
        if target is None:
            return False
        return (_name_of(parts.hostname), origin_port) == (target[0], target[1] or default)


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
        detail = (
            f"Upload too large: {'more than ' if more else ''}{size:,} bytes; this server takes at most "
            f"{self.limit:,} bytes ({megabytes:g} MB, --max-upload-mb)."
        )
        await _answer(send, 413, detail)


async def _answer(send, status: int, detail: str) -> None:  # noqa: ANN001
    """A JSON ``{"detail": ...}`` answer sent before the app has read the request; the
    connection is closed after it (the body is left unread)."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:  # noqa: ANN001
    """Serve ``app`` from a thread of this process while the block runs; yields its base URL
    (``port=0``: a free port). For tests and benchmarks; ``adkd serve`` runs uvicorn itself."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=GRACE)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"adkd.deploy.serve did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
