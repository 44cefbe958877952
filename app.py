"""Gradio app: quantized Wan text- and image-to-video.

    python app.py --demo        the tiny built-in model on CPU, no network needed
    python app.py               the model catalog (downloads from the Hub) on a GPU; falls back to
                                the demo when there is no GPU or the Hub cannot be reached
                                (with HF_HUB_OFFLINE=1 the catalog loads from the local cache)
Honours --port / --host and Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket

from engine.hardware import detect_gpu, zerogpu_gpu
from engine.hub import is_offline
from engine.service import VideoService

log = logging.getLogger("app")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Quantized Wan video generation UI")
    p.add_argument("--demo", action="store_true", help="use the tiny built-in model on CPU (no download)")
    p.add_argument("--port", type=int, default=None, help="default: GRADIO_SERVER_PORT or 7860")
    p.add_argument("--host", default=None, help="default: GRADIO_SERVER_NAME or 127.0.0.1")
    p.add_argument("--outputs", default=None, help="folder for generated videos (default: a temp folder)")
    return p.parse_args(argv)


def hub_reachable(timeout: float = 3.0) -> bool:
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True  # a proxy decides; downloads will say if it cannot
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def make_service(args: argparse.Namespace) -> VideoService:
    gpu = None if args.demo else (detect_gpu() or zerogpu_gpu())
    demo = args.demo
    if not demo and gpu is None:
        log.warning("no CUDA GPU found: starting the demo with the built-in model (use a GPU for real models)")
        demo = True
    elif not demo and not is_offline() and not hub_reachable():
        # HF_HUB_OFFLINE=1 is a choice, not an outage: the catalog then loads from the local cache
        log.warning("the Hugging Face Hub cannot be reached: starting the demo (set HF_HUB_OFFLINE=1 to use "
                    "models already in the cache)")
        demo = True
    return VideoService(gpu, demo, out_dir=args.outputs)


def build_app(args: argparse.Namespace | None = None):
    from ui import build_ui

    args = args or parse_args([])
    service = make_service(args)
    app = build_ui(service)
    app.queue(default_concurrency_limit=1, max_size=16)  # one GPU job at a time, a bounded wait list
    return app, service


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from engine.errors import EngineError

    try:
        app, service = build_app(args)
    except EngineError as e:  # e.g. an outputs folder that is a symlink or someone else's
        raise SystemExit(f"error: {e}") from None
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = args.port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    from ui.bounds import launch_kwargs

    # Only the outputs folder is served; user-supplied paths are never read; bodies and uploads are bounded.
    app.launch(server_name=host, server_port=port, ssr_mode=False, show_error=True,
               **launch_kwargs(service.out_dir))


if __name__ == "__main__":
    main()
