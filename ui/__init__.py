"""Gradio UI: layout and handlers over engine.service. No model code lives here."""
from .layout import build_ui

__all__ = ["build_ui"]
