"""Gradio app: quantized Wan text- and image-to-video.

    python app.py --demo        the tiny built-in model on CPU, no network needed
    python app.py               the model catalog (downloads from the Hub) on a GPU; falls back to
                                the demo when there is no GPU or the Hub cannot be reached
                                (with HF_HUB_OFFLINE=1 the catalog loads from the local cache)
Honours --port / --host and Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT. Gradio's usage
analytics are off unless GRADIO_ANALYTICS_ENABLED is set. On a ZeroGPU Space the default model is
loaded at start-up, outside the `spaces.GPU` call.
"""
from __future__ import annotations

import os
import socket

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it reads it then

import argparse  # noqa: E402
import logging  # noqa: E402

from ui import zerogpu  # noqa: E402 - imports `spaces` (on a Space) before anything touches CUDA

zerogpu.spaces_module()

from engine.errors import EngineError  # noqa: E402
from engine.gpu import detect_gpu, zerogpu_gpu  # noqa: E402
from engine.hub import is_offline, unreachable  # noqa: E402
from engine.service import VideoService  # noqa: E402

log = logging.getLogger("app")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Quantized Wan video generation UI")
    p.add_argument("--demo", action="store_true", help="use the tiny built-in model on CPU (no download)")
    p.add_argument("--port", type=int, default=None, help="default: GRADIO_SERVER_PORT or 7860")
    p.add_argument("--host", default=None, help="default: GRADIO_SERVER_NAME or 127.0.0.1")
    p.add_argument("--outputs", default=None, help="folder for generated videos (default: a temp folder)")
    return p.parse_args(argv)


def hub_reachable() -> bool:
    return unreachable(timeout=3.0) is None  # the one check engine.hub uses before downloads


def make_service(args: argparse.Namespace) -> VideoService:
    # On ZeroGPU no GPU is attached at start-up (and CUDA must not be initialised): the platform's GPU.
    gpu = None if args.demo else (zerogpu_gpu() if zerogpu.active() else detect_gpu())
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


def preload_for_zerogpu(service: VideoService) -> None:
    """ZeroGPU runs each `spaces.GPU` call in a forked process: load the default model once, here,
    so every job starts from it (its weights come from the cache that `preload_from_hub` filled)."""
    if service.demo or not zerogpu.active():
        return
    model = service.default_model()
    try:
        service.preload(model)
        log.info("ZeroGPU: %s loaded at start-up", model)
    except EngineError as e:  # the app still starts; the first job loads it and shows the same sentence
        log.warning("ZeroGPU: could not load %s at start-up: %s", model, e)
    except Exception as e:  # noqa: BLE001 - a library or platform failure: logged, the app still starts
        log.warning("ZeroGPU: could not load %s at start-up (%s: %s); the first job will try again",
                    model, type(e).__name__, e)


def build_app(args: argparse.Namespace | None = None):
    from ui import build_ui

    args = args or parse_args([])
    service = make_service(args)
    preload_for_zerogpu(service)
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
    if _port_taken(host, port):
        raise SystemExit(f"error: port {port} on {host} is already in use (another app, or this one running twice); "
                         "stop it or choose another with --port N")
    app.launch(server_name=host, server_port=port, ssr_mode=False, show_error=True,
               **launch_kwargs(service.out_dir))


def _port_taken(host: str, port: int) -> bool:
    """Gradio answers a taken port with an OSError and a traceback; ask first so it is one sentence."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


if __name__ == "__main__":
    main()
