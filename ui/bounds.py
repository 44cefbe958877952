"""Bounds on what a visitor can make the server hold: request bodies (an ASGI middleware given to Gradio's
FastAPI app through `launch(app_kwargs=...)`), uploads (Gradio's `max_file_size`) and cached files
(Gradio's `delete_cache`, set on the Blocks in layout.py)."""
from __future__ import annotations

MAX_BODY_BYTES = 1 << 20  # JSON calls carry a prompt of <= 2000 characters and a few numbers
MAX_UPLOAD_BYTES = 25 << 20  # input images
UPLOAD_SUFFIX = "/upload"  # Gradio's multipart upload route (/gradio_api/upload)


class BodyLimit:
    """Answers 413 to a body declared larger than the limit; cuts a body that grows past it while it
    streams (chunked, or a lying Content-Length) by telling the app the client went away."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, upload_bytes: int = MAX_UPLOAD_BYTES):
        self.app, self.max_bytes, self.upload_bytes = app, max_bytes, upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "").rstrip("/")
        # multipart framing on top of the file itself
        limit = self.upload_bytes + (1 << 20) if path.endswith(UPLOAD_SUFFIX) else self.max_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = True
            if too_big:
                return await _refuse(send, limit)
        seen = 0

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    return {"type": "http.disconnect"}
            return message

        return await self.app(scope, bounded_receive, send)


async def _refuse(send, limit: int) -> None:
    body = f"request body larger than {limit // 2**20} MiB".encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def launch_kwargs(out_dir) -> dict:
    """What app.launch needs to serve our videos and nothing more, with bounded bodies and uploads."""
    from starlette.middleware import Middleware

    return dict(allowed_paths=[str(out_dir)], max_file_size=MAX_UPLOAD_BYTES,
                app_kwargs={"middleware": [Middleware(BodyLimit)]})
