"""Gradio UI: layout and handlers over engine.service. No model code lives here.

`build_ui` imports the layout (and with it Gradio and the engine) only when called, so that app.py
can import `ui.zerogpu`, and with it the `spaces` package, before anything touches CUDA."""


def build_ui(service):
    from .layout import build_ui as build

    return build(service)


__all__ = ["build_ui"]
