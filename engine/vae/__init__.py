"""Video decoders: the full Wan VAE's speed settings, LightX2V's LightVAE and the tiny TAEHV-family
decoders, and the live preview. See choice.py for the config keys."""
