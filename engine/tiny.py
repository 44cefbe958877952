"""A tiny Wan pipeline built in code: random weights, a character tokenizer, no download.

It is the app's embedded default and the test suite's model: the real diffusers Wan classes at a
size that runs in seconds on a CPU. Its videos are noise-like (the weights are random); what it
proves is that every stage of the real pipeline runs with quantized layers.
"""
from __future__ import annotations

import string

import torch

TINY_DIM = 64  # multiples of 32, so every format (MXFP8 needs K % 32 == 0) applies to every layer


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(string.printable))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one token per character
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def tiny_text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                     eos_token_id=1, decoder_start_token_id=0)
    return UMT5EncoderModel(cfg).eval()


def tiny_transformer(i2v: bool = False, image_dim: int = 32):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=TINY_DIM // 2,
        in_channels=36 if i2v else 16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=2 * TINY_DIM,
        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        image_dim=image_dim if i2v else None, added_kv_proj_dim=TINY_DIM if i2v else None).eval()


def tiny_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=32)
    return CLIPVisionModel(cfg).eval()


def tiny_image_processor():
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # no torchvision needed

    return CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})


def build_tiny_pipeline(task: str = "t2v", seed: int = 0):
    """The same weights for the same seed, on CPU in float32."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    parts = dict(tokenizer=tokenizer, text_encoder=tiny_text_encoder(len(tokenizer)), vae=tiny_vae(),
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    if task == "i2v":
        return WanImageToVideoPipeline(**parts, transformer=tiny_transformer(i2v=True),
                                       image_encoder=tiny_image_encoder(), image_processor=tiny_image_processor())
    if task != "t2v":
        raise ValueError(f"task must be 't2v' or 'i2v', got {task!r}")
    return WanPipeline(**parts, transformer=tiny_transformer())
