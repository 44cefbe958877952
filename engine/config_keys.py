"""The config key vocabulary, in one place: keys this engine acts on, and keys LightX2V knows.

A key in neither set is probably a typo (engine/config.py warns, naming the closest known key); a key
only LightX2V knows gets one info line ("not used by this engine"). To make a new key known, add it
to ENGINE_KEYS with one line.
"""
from __future__ import annotations

ENGINE_KEYS = frozenset({
    # quantization (engine/config.py)
    "mm_config", "dit_quantized", "dit_quant_scheme", "dit_quantized_ckpt",
    "t5_quantized", "t5_quant_scheme", "t5_quantized_ckpt",
    "clip_quantized", "clip_quant_scheme", "clip_quantized_ckpt",
    "high_noise_quantized_ckpt", "low_noise_quantized_ckpt",
    "dit_layer_schemes", "t5_layer_schemes", "clip_layer_schemes",  # per-layer schemes (engine/layer_rules.py)
    # request defaults (engine/request.py) and sampling (engine/builder.py)
    "infer_steps", "target_video_length", "target_height", "target_width", "sample_guide_scale",
    "sample_shift", "fps", "seed", "enable_cfg", "denoising_step_list",
    # attention, VAE, offload, fusion
    "self_attn_1_type", "cross_attn_1_type", "cross_attn_2_type",
    "attn_bf16_first_steps", "attn_bf16_last_steps", "attn_bf16_blocks",
    "use_tiling_vae", "use_tiny_vae", "tiny_vae_path", "use_lightvae", "vae_path",
    "decoder", "use_tae", "tae_path", "need_scaled", "tae_chunk", "vae_dtype",  # engine/vae
    "vae_channels_last", "vae_cudnn_benchmark", "vae_compile", "vae_fused_norm",
    "cpu_offload", "offload_granularity", "t5_cpu_offload", "offload_use_stream", "parallel", "fused_wan",
})

# Top-level keys of every configs/*.json of ModelTC/LightX2V (commit f8aee98b, 2026-08-21).
_LIGHTX2V = """
    CONDITION_IMAGE_SIZE USE_IMAGE_ID_IN_PROMPT _comment action_chunk_index action_chunk_size action_config
    action_dim action_dim_hidden action_expert_dim action_expert_ffn_dim_multiplier action_infer_steps
    action_mode action_multichunk action_norm_method action_norm_stat action_num_chunks
    action_sample_guide_scale action_sample_shift action_state_dim actions_per_plan adapter_attn_type
    adapter_model_path adapter_quant_scheme adapter_quantized add_duration_template add_resolution_template
    apply_confidence_mask apply_edge_mask apply_gated_attention apply_sky_mask ar_config aspect_ratio
    attention_backend attention_dim_head attention_out_dim attention_type attn_impl attn_rms_norm_type
    attn_type audio_adapter_cpu_offload audio_channels audio_cross_attn_type audio_encoder_cpu_offload
    audio_encoder_path audio_feat_fps audio_feat_window_neighbor_frame audio_feature_dim audio_ff_bias
    audio_flow_shift audio_fps audio_hop_length audio_latents_per_second audio_mel_bins
    audio_mux_prefer_copy audio_num_tokens audio_projection_dim audio_sample_rate audio_sampling_rate
    audio_scale_factor audio_sr audio_type audio_vae_original_ckpt audio_window auto_duration
    auto_target_shape axes_dims_rope binarize_gripper bot_task boundary boundary_step_index box_v
    bucket_shape byt5_cpu_offload camera_size caption_proj_before_connector causal_rope_type
    causal_self_attn_type cfg_interval cfg_parallel cfg_renorm_min cfg_scale changing_resolution
    changing_resolution_steps chunk_latent_frames ckpt_path clean_cuda_cache clip_configs clip_cpu_offload
    clip_embed_dim clip_frame clip_len clip_original_ckpt clip_quant_scheme clip_quantized
    clip_quantized_ckpt coefficients color_fix comment comment_parallel compress_gs_max_points compress_pts
    compress_pts_max_points compress_pts_voxel_size conditioning_latent_frames confidence_percentile
    config_path connector_act control_type convert_model_dtype cosmos3_meta_init cpu_offload
    cpu_offload_activations cross_attention_adaln cross_attention_backend cross_attn_1_type
    cross_attn_2_type cross_attn_norm cross_attn_type dancer_stage data dataset_stats_path decode_video
    default_input_info default_prompt denoising_step_list device_name dim disable_heads disagg_config
    disagg_mode distilled_sigma_values distilled_sigma_values_upsample dit_original_ckpt dit_overlap
    dit_quant_scheme dit_quantized dit_quantized_ckpt dit_step_mask do_sample domain_name
    double_precision_rope downsample_factor draft_attn_sparsity_ratio drop_first_motion dummy_model
    duration_head_original_ckpt dynamic_sparse_attn_setting edge_depth_threshold edge_normal_threshold
    emotions enable_action_cfg enable_bf16 enable_cfg enable_cfg_renorm enable_dynamic_cfg enable_kv_cache
    enable_pbar enable_rembg enable_reuse enable_sound enable_text_cfg enable_text_kv_cache
    enable_vision_context env_type eps f2v_process feature_caching ffmpeg_preset ffn_dim first_clip_frame
    fixed_shape flashinfer_autotune_cache flashinfer_autotune_cache_by_phase flashinfer_autotune_mode
    flashinfer_autotune_round_up flashinfer_tune_max_num_tokens flashinfer_tuning_buckets flow_shift fls
    fp32_attn_proj_first_n_blocks fp32_attn_proj_last_n_blocks fps frame_seq_length freq_dim
    gemma_attn_implementation gemma_cpu_offload general_sparse_attn_setting global_downsample_rate
    gripper_postprocess guidance_scale h3_step_update heads_num hidden_size hidream_model_type
    high_noise_original_ckpt high_noise_quantized_ckpt hunyuan_cfg_mode hunyuan_image3_pipeline_layout
    i2i_denoise_strength i2i_max_image_size image_conditioning_crf image_path image_size in_channels in_dim
    incremental_segment_frames infer_align_image_size infer_frames infer_steps inference_hyper
    infinitetalk_audio_output_dim infinitetalk_context_tokens infinitetalk_mode infinitetalk_size
    infinitetalk_vae_scale inject_sample_info inpaint_mask_enabled input_scale_file interactive
    interpolate_pos inverse_used_action_channel_ids is_sr_running keep_latents_dtype_in_scheduler
    keep_original_aspect keyboard_dim_in languages latent_patch_size layer_norm_type layered layers
    lazy_load lightllm_config lightvae_pruning_rate lightx2v_path llm_config_update ln_type load_from_rank0
    load_kv_cache_in_pipeline_for_debug load_pretrained_backbones local_hostname log_scale log_time
    look_ahead lora_configs lora_dynamic_apply low_noise_original_ckpt low_noise_quantized_ckpt magcache_K
    magcache_calibration magcache_ratios magcache_retention_ratio magcache_thresh max_area max_custom_size
    max_image_area max_latent_size_update max_new_tokens max_resolution max_think_token_n mc_level
    memory_frames memory_window_size meta metadata_server mm_double_blocks_depth mm_guider
    mm_single_blocks_depth mode model_cls model_path model_size model_sky_threshold model_type modulate_type
    modulate_with_rmsnorm moe_backend moe_flashinfer_setting motion_frame motion_frames motus_quant_scheme
    motus_quantized mouse_dim_in music_inject_layers mxfp8_fuse_enable mxint8_fuse_enable nbhd_attn_setting
    negative_prompt norm_modulate_backend norm_output_audio norm_stat normalize_mode num_action_classes
    num_blocks num_channels_latents num_chunks num_disk_workers num_fragments num_frame_per_block num_frames
    num_heads num_iterations num_layers num_output_frames num_repeat num_steps_wait num_train_timesteps
    num_video_frames obs_cam_aliases obs_cam_keys octree_resolution offload_granularity offload_ratio
    offload_resident_double_blocks offload_resident_policy offload_resident_single_blocks
    offload_use_block_slab out_channels out_dim parallel past_frame patch_size pe_cpu_offload pe_temperature
    pe_top_p pipeline_parallel policy_flip_gripper policy_history_length policy_profile policy_prompt_format
    policy_use_state prev_frame_length projection_transformer_layers prompt_template_encode
    prompt_template_encode_start_idx prompt_travel protocol qk_norm quality queue_size qwen25vl_cpu_offload
    qwen25vl_quant_scheme qwen25vl_quantized qwen25vl_quantized_ckpt qwen3_quant_scheme qwen3_quantized
    qwen3_quantized_ckpt rainfusion_attn_setting raw_action_dim rdma_buffer_slot_size reae_frame_batch_size
    ref_downscale_factor ref_state refer_offset_h refer_offset_t refer_offset_w refer_stride
    reference_video_strength refert_num refiner_attn_type render_depth render_interp_per_pair replace_flag
    residual_diff_threshold resize_mode resolution resolution_rate rms_norm_type rms_type robot_state_dim
    rope_dim_list rope_layout rope_theta rope_type rotary_chunk sample_audio_guide_scale sample_guide_scale
    sample_shift sample_text_guide_scale save_camera save_colmap save_conf save_depth save_gs save_normal
    save_points save_rendered save_sky_mask scheduler_name seed select_window_out_flag self_attn_1_type
    self_attn_type self_joint_attn_type sensenova_source_path seq_parallel shift siglip_cpu_offload
    skip_fp8_block_index sky_mask_source sol_attn_setting sparge sparge_attn_setting sparge_ckpt sparse_type
    spas_flash_attn4_setting spas_sage_attn2_setting spas_sage_attn3_setting stabilization_level
    state_norm_stat stream_save_video streaming sub_model_folder sub_model_name sub_servers subfolder
    t5_cpu_offload t5_original_ckpt t5_quant_scheme t5_quantized t5_quantized_ckpt t5_tokenizer_path
    tae_path target_fps target_height target_size target_video_length target_width task task_hint
    task_variant taylor_cache_enable_first_enhance taylor_cache_enable_tailing_enhance
    taylor_cache_first_enhance_steps taylor_cache_high_freqs_order taylor_cache_interval
    taylor_cache_low_freqs_order taylor_cache_order taylor_cache_tailing_enhance_steps teacache_thresh
    temporal_context_size text_dim text_do_sample text_encoder_cpu_offload text_encoder_dim
    text_encoder_offload_granularity text_encoder_original_ckpt text_encoder_out_layers
    text_encoder_quant_scheme text_encoder_quantized text_encoder_quantized_ckpt
    text_encoder_release_block_offload_buffers text_encoder_tensor_parallel text_encoder_type text_len
    text_stream_output text_temperature text_top_k text_top_p think timestep_shift tokenizer_max_length
    torch_dtype tp_mm_type tp_rms_norm_type training_mode transformer_in_channels transformer_model_name
    trt_vae_config und_expert_ffn_dim_multiplier und_expert_hidden_size understanding_output unload_modules
    upsampler_original_ckpt use_31_block use_adaln_cache use_additional_t_cond use_base_model
    use_bi_model_as_main use_compile use_en_prompt use_event_offload use_fp32_attn_proj use_fp32_fc1
    use_fp32_fc2 use_fp32_param_predictor_fc1 use_fused_qk_rms_norm use_fused_qkv_attn use_image_encoder
    use_img_emb use_layer3d_rope use_magi_compile use_pe use_prompt_enhancer use_prope
    use_real_mel_spectrogram use_ret_steps use_system_prompt use_tae use_taylor_cache use_tiling_vae
    use_timestep_transform use_triton_qknorm_rope use_upsampler used_action_channel_ids vae_attn_type
    vae_causal_slice_size vae_cpu_offload vae_decode_parallel vae_dtype vae_memory_limit_gb
    vae_offload_cache vae_path vae_scale_factor vae_scale_factors vae_sensitive_layer_dtype
    vae_sp_color_chunk_size vae_spatial_scale_factor vae_stride vae_tile_overlap vae_tile_size vae_type
    vae_use_compile vae_z_dim version video_action_freq_ratio video_codec video_codec_options video_duration
    video_exec_step video_flow_shift video_frame_interpolation video_height video_max_frames
    video_min_frames video_strategy video_super_resolution video_vae_original_ckpt video_vae_quant_scheme
    video_vae_quantized video_vae_quantized_ckpt video_width view_crop_scale view_point visual_gen
    visual_und vit_max_num_patch_per_side vlm_path voices wan_ckpt_dir wan_path weight_auto_quant
    window_size wm_extended_scope zero_cond_t zoe_style_noise
"""
LIGHTX2V_KEYS = frozenset(_LIGHTX2V.split())
KNOWN_KEYS = ENGINE_KEYS | LIGHTX2V_KEYS
