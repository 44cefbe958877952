"""The page: model and preset, per-component overrides, task inputs, run/stop, video and stats."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from engine.presets import RUN_OPTIONS
from engine.service import SCHEME_CHOICES
from engine.vae.choice import DECODER_NOTES

from .handlers import MAX_SEED, TASK_LABELS, Handlers, number_updates, size_labels
from .preview import availability as preview_availability

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CACHE_BOUNDS = (3600, 24 * 3600)  # Gradio's copies of videos and uploads: checked hourly, kept a day
INTRO = ("Video generation with Wan models whose linear layers run quantized (FP8, INT8, NVFP4, MXFP8), "
         "using LightX2V's pre-quantized weights from the Hugging Face Hub. 4-step distilled models default to "
         "LightX2V's schedule (4 steps, guidance off, shift 5); models without a distilled file use their base "
         "model's steps and guidance, and an empty Shift keeps their scheduler's own shift.")


def examples() -> tuple[list[list[str]], list[list[str]]]:
    """([prompt], [image path, prompt]) rows from assets/examples.json."""
    data = json.loads((ASSETS / "examples.json").read_text())
    prompts = [[p] for p in data.get("prompts", [])]
    images = [[str(ASSETS / item["file"]), item["prompt"]] for item in data.get("images", [])]
    return prompts, images


# Measured on an H200 (docs/benchmarks.md, 2026-12-04); needs an FP8 GPU (Ada, Hopper, Blackwell).
ATTENTION_NOTE = ("8-bit: our SageAttention2-style kernels (INT8 Q·K, FP8 P·V). On Hopper 1.46x cuDNN bf16 at the "
                  "14B 480p shape (1.52x at 720p): a 14B 4-step 480p video in 8.7 s instead of 10.5 s with fp8 "
                  "alone. Other FP8 GPUs run the Triton kernel (1.27x on an H200). Relative error 0.044 against "
                  "bf16 attention; same video PSNR as fp8 alone")


def build_ui(service) -> gr.Blocks:
    h = Handlers(service)
    model0 = service.default_model()
    d = service.defaults(model0)
    tasks0 = [TASK_LABELS[t] for t in service.tasks(model0)]
    fields0 = number_updates(d, service.limits(model0))
    with gr.Blocks(title="Quantized Wan video", delete_cache=CACHE_BOUNDS,
                   analytics_enabled=False) as demo:
        gr.Markdown(f"# Quantized Wan video\n{INTRO}")
        gr.Markdown(h.hardware_text(), elem_id="hardware")
        with gr.Row():
            model = gr.Dropdown(service.models(), value=model0, label="Model", elem_id="model")
            preset = gr.Dropdown(h.preset_choices(), value="auto", label="Preset", elem_id="preset")
        with gr.Accordion("Override a component's scheme", open=False):
            with gr.Row():
                dit = gr.Dropdown(list(SCHEME_CHOICES), value="preset", label="DiT (transformer)")
                t5 = gr.Dropdown(list(SCHEME_CHOICES), value="preset", label="T5 text encoder")
                clip = gr.Dropdown(list(SCHEME_CHOICES), value="preset", label="CLIP image encoder")
            with gr.Row():
                attention = gr.Dropdown(["preset", *RUN_OPTIONS["attention"]], value="preset", label="Self-attention",
                                        info=ATTENTION_NOTE, elem_id="attention")
                decoder = gr.Dropdown(["preset", *RUN_OPTIONS["decoder"]], value="preset", label="VAE decoder",
                                      info="; ".join(f"{k}: {v}" for k, v in DECODER_NOTES.items()), elem_id="decoder")
        preset_info = gr.Markdown(h.preset_text(model0, "auto"), elem_id="preset-info")
        with gr.Row():
            with gr.Column():
                task = gr.Radio(tasks0, value=tasks0[0], label="Task", elem_id="task")
                image = gr.Image(type="pil", label="Input image", visible=d.task == "i2v", elem_id="image")
                prompt = gr.Textbox(label="Prompt", lines=3, max_length=2000, elem_id="prompt",
                                    placeholder="A corgi running on a beach at sunset, cinematic")
                negative = gr.Textbox(label="Negative prompt", max_length=2000, elem_id="negative")
                size = gr.Dropdown(size_labels(service.size_presets(model0)), value=None, label="Size preset",
                                   elem_id="size")
                with gr.Row():
                    width = gr.Number(precision=0, step=16, elem_id="width", **_initial(fields0[0]))
                    height = gr.Number(precision=0, step=16, elem_id="height", **_initial(fields0[1]))
                    frames = gr.Number(precision=0, step=4, elem_id="frames", **_initial(fields0[2]))
                with gr.Row():
                    steps = gr.Number(precision=0, elem_id="steps", **_initial(fields0[3]))
                    guidance = gr.Number(d.guidance, label="Guidance (1 = off)", elem_id="guidance")
                    # Text, not Number: an empty Number is drawn and sent as 0, and "empty" must mean the
                    # scheduler's own shift (base models).
                    shift = gr.Textbox(fields0[5]["value"], label="Shift (empty = the scheduler's own)",
                                       elem_id="shift")
                with gr.Row():
                    seed = gr.Number(42, label=f"Seed (0–{MAX_SEED})", precision=0, elem_id="seed")
                    random_seed = gr.Checkbox(False, label="Random seed", elem_id="random-seed")
                preview_ok, preview_why = preview_availability(service, model0)
                preview = gr.Checkbox(False, label="Live preview (tiny decoder)", info=preview_why,
                                      interactive=preview_ok, elem_id="live-preview")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                prompts, images = examples()
                gr.Examples(prompts, [prompt], label="Example prompts")
                gr.Examples(images, [image, prompt], label="Example image (for image to video)")
            with gr.Column():
                video = gr.Video(label="Video", format="mp4", elem_id="video", autoplay=False)
                picture = gr.Image(label="Live preview (latest step)", type="numpy", interactive=False,
                                   height=240, elem_id="preview")
                status = gr.Markdown("", elem_id="status")
                table = gr.Markdown("", elem_id="stats-table")
                with gr.Accordion("Raw statistics (JSON)", open=False):
                    stats = gr.JSON(label="Run statistics")

        # Gradio copies every returned file into its cache unless it is there already: write videos there.
        service.keep_outputs_in(demo.GRADIO_CACHE)
        overrides = [dit, t5, clip, attention, decoder]
        model.change(h.on_model, [model, preset, *overrides],
                     [task, image, width, height, frames, steps, guidance, shift, size, preset_info], api_name=False)
        for box in (preset, *overrides):
            box.change(h.preset_text, [model, preset, *overrides], preset_info, api_name=False)
        for box in (model, preset, decoder):
            box.change(h.preview_box, [model, preset, decoder], preview, api_name=False)
        task.change(h.on_task, task, image, api_name=False)
        size.change(h.on_size, size, [width, height], api_name=False)
        # New inputs and outputs go last: API clients call /generate by position.
        job = run.click(h.generate, [model, preset, dit, t5, clip, task, image, prompt, negative, width, height,
                                     frames, steps, guidance, shift, seed, random_seed, attention, decoder, preview],
                        [video, table, stats, status, seed, picture], api_name="generate", concurrency_limit=1,
                        show_progress_on=[video])
        job.failure(h.last_error, None, [status, video], api_name=False, show_progress="hidden")
        # Stop runs beside the job (its own concurrency group) and ends only this tab's job.
        stop.click(h.stop, None, status, api_name="stop", concurrency_limit=None, show_progress="hidden")
    return demo


def _initial(update: dict) -> dict:
    return {"value": update["value"], "label": update["label"]}
