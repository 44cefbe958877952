"""Checkpoint files: reading (io, sources), their layouts (formats, comfy, keymaps), filling a model
built on the meta device (assemble), and the loaders per component (dit, encoders). Nothing is imported
here, so `engine.checkpoint.files` stays light for the callers that only need the file checks."""
