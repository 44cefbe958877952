"""The page: model and preset, per-component overrides, task inputs, run/stop, video and stats."""
from __future__ import annotations

import gradio as gr

from engine.service import SCHEME_CHOICES, VideoService

from .handlers import TASK_LABELS, Handlers
from .zerogpu import on_gpu

INTRO = ("Video generation with Wan models whose linear layers run quantized (FP8, INT8, NVFP4, MXFP8), "
         "using LightX2V's pre-quantized weights from the Hugging Face Hub. 4-step distilled models default to "
         "LightX2V's schedule (4 steps, guidance off, shift 5); models without a distilled file use their base "
         "model's steps, guidance and scheduler shift (an empty Shift keeps the scheduler's).")


def build_ui(service: VideoService) -> gr.Blocks:
    h = Handlers(service)
    model0 = service.default_model()
    d = service.defaults(model0)
    tasks0 = [TASK_LABELS[t] for t in service.tasks(model0)]
    with gr.Blocks(title="Quantized Wan video") as demo:
        gr.Markdown(f"# Quantized Wan video\n{INTRO}")
        gr.Markdown(h.hardware_text(), elem_id="hardware")
        with gr.Row():
            model = gr.Dropdown(service.models(), value=model0, label="Model", elem_id="model")
            preset = gr.Dropdown(h.preset_choices(), value="auto", label="Preset", elem_id="preset")
        preset_info = gr.Markdown(h.preset_text(model0, "auto"), elem_id="preset-info")
        with gr.Accordion("Override a component's scheme", open=False):
            with gr.Row():
                dit = gr.Dropdown(list(SCHEME_CHOICES), value="preset", label="DiT (transformer)")
                t5 = gr.Dropdown(list(SCHEME_CHOICES), value="preset", label="T5 text encoder")
                clip = gr.Dropdown(list(SCHEME_CHOICES), value="preset", label="CLIP image encoder")
        with gr.Row():
            with gr.Column():
                task = gr.Radio(tasks0, value=tasks0[0], label="Task", elem_id="task")
                image = gr.Image(type="pil", label="Input image", visible=d.task == "i2v", elem_id="image")
                prompt = gr.Textbox(label="Prompt", lines=3, max_length=2000, elem_id="prompt",
                                    placeholder="A corgi running on a beach at sunset, cinematic")
                negative = gr.Textbox(label="Negative prompt", max_length=2000, elem_id="negative")
                with gr.Row():
                    width = gr.Number(d.width, label="Width (multiple of 16)", precision=0, step=16)
                    height = gr.Number(d.height, label="Height (multiple of 16)", precision=0, step=16)
                    frames = gr.Number(d.num_frames, label="Frames (4k+1)", precision=0, step=4)
                with gr.Row():
                    steps = gr.Number(d.steps, label="Steps", precision=0)
                    guidance = gr.Number(d.guidance, label="Guidance (1 = off)")
                    shift = gr.Number(d.shift, label="Shift (empty = the model's own)")
                    seed = gr.Number(42, label="Seed", precision=0)
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column():
                video = gr.Video(label="Video", format="mp4", elem_id="video", autoplay=False)
                status = gr.Markdown("", elem_id="status")
                stats = gr.JSON(label="Run statistics (time per step, memory, kernel per layer type)")

        model.change(h.on_model, [model, preset],
                     [task, image, width, height, frames, steps, guidance, shift, preset_info], api_name=False)
        preset.change(h.preset_text, [model, preset], preset_info, api_name=False)
        task.change(h.on_task, task, image, api_name=False)
        job = run.click(on_gpu(h.generate), [model, preset, dit, t5, clip, task, image, prompt, negative, width,
                                             height, frames, steps, guidance, shift, seed],
                        [video, stats, status], api_name="generate", concurrency_limit=1)
        # Stop runs beside the job (its own concurrency group) and asks it to end after the current step.
        stop.click(h.stop, None, status, api_name="stop", concurrency_limit=None)
        del job
    return demo
