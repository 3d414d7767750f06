"""The HTTP server behind ``adkd serve``: the bind checks, then uvicorn with the app (what the
page and the endpoint do: the command's help, :mod:`adkd.cli.serve`)."""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from adkd.deploy.predict import check_device
from adkd.deploy.serve.app import GRACE, LOOPBACK, UploadLimit, create_app
from adkd.deploy.serve.session import Session
from adkd.errors import UserError


def _bind_address(host: str, port: int) -> None:
    """Check that the server can listen on ``host``:``port`` before the model is loaded; a
    UserError that says which of the two is at fault otherwise."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port: give a number from 1 to 65535 (0: any free port).")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(
            f"Cannot listen on --host {host!r}: the name cannot be resolved ({err}). Give an address of "
            "this machine (127.0.0.1, the default: this machine only; 0.0.0.0: every network)."
        ) from err
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port just freed is free
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(
                    f"Cannot listen on {host}:{port} ({err.strerror}): another server (an adkd.deploy.serve?) "
                    "holds it; give another --port."
                ) from err
            if err.errno == errno.EACCES:
                raise UserError(
                    f"Cannot listen on {host}:{port} ({err.strerror}): ports below 1024 are the system's; "
                    "give a --port from 1024 to 65535."
                ) from err
            raise UserError(
                f"Cannot listen on --host {host} ({err.strerror or err}): it is not an address of this "
                "machine. Give one of its addresses (127.0.0.1, the default; 0.0.0.0: every network)."
            ) from err


def run(args: argparse.Namespace) -> int:
    try:
        check_device(args.device)
        if not args.max_upload_mb > 0:
            raise UserError(f"--max-upload-mb must be above 0, got {args.max_upload_mb:g}.")
        if not 0 < args.max_pixels <= 2000:
            raise UserError(f"--max-pixels must be above 0 and at most 2000 (megapixels), got {args.max_pixels:g}.")
        _bind_address(args.host, args.port)

        if args.precision != "fp32" and args.engine != "openvino":
            raise UserError(f"--precision {args.precision} is for --engine openvino.")
        session = Session(args.model, args.engine, args.device, precision=args.precision, category=args.category)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted before serving.", file=sys.stderr)
        return 130
    import uvicorn

    local = args.host in LOOPBACK
    if not local:
        print(
            f"warning: serving on {args.host}: anyone who can reach this machine can score images and change "
            "this run's threshold. Folder scoring is off.",
            file=sys.stderr,
        )
    if session.images_note:
        print(f"warning: {session.images_note}", file=sys.stderr)
    session.max_pixels = int(args.max_pixels * 1e6)
    import warnings

    from PIL import Image

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sizes are checked against --max-pixels
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, session.max_pixels)  # which PIL's must not undercut
    app = UploadLimit(
        create_app(session, folders=local, host=args.host, allowed_hosts=args.allow_host),
        int(args.max_upload_mb * 2**20),
    )
    shown = f"[{args.host}]" if ":" in args.host else args.host

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:  # noqa: ANN001
            await super().startup(sockets)
            if self.started:  # listening: a client that waits for this line can connect
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else args.port
                what = f"{session.describe()['method']}, {session.engine_name} on {args.device}"
                print(
                    f"Serving {session.checkpoint} ({what}) at http://{shown}:{port}/  (POST /predict; Ctrl-C stops)",
                    flush=True,
                )

        def handle_exit(self, sig, frame) -> None:  # noqa: ANN001 - Ctrl-C, SIGTERM: long requests end at once
            session.stopping.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=GRACE)
    Server(config).run()
    print("Stopped.", file=sys.stderr)
    return 0
