"""Making nvidia-cudnn-frontend importable for a bench run without installing it system-wide.

    --wheel-dir DIR   DIR holds either an installed package (DIR/cudnn/__init__.py, e.g. from
                      `pip install --target DIR ...`) or the wheels (nvidia_cudnn_frontend-*.whl);
                      the wheel matching this Python is installed into a temporary --target folder.
Without it the module is used if it is already importable; otherwise the bench rows say why not.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile


def use_wheel_dir(path: str | None) -> str:
    """Put the frontend on sys.path from `path` (see the module doc); returns a line saying what happened."""
    if not path:
        return "cudnn frontend: no --wheel-dir; using it only if already importable"
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "cudnn", "__init__.py")):
        sys.path.insert(0, path)
        return f"cudnn frontend: from {path}"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted(glob.glob(os.path.join(path, f"nvidia_cudnn_frontend-*-{tag}-*.whl")))
    if not wheels:
        found = [os.path.basename(w) for w in glob.glob(os.path.join(path, "*.whl"))]
        return f"cudnn frontend: no wheel for {tag} in {path} (found: {found or 'none'})"
    target = os.path.join(tempfile.gettempdir(), f"cudnnfe-{tag}")
    if not os.path.isfile(os.path.join(target, "cudnn", "__init__.py")):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--target", target, wheels[-1]], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"cudnn frontend: pip could not install {os.path.basename(wheels[-1])}: {proc.stderr.strip()[-300:]}"
    sys.path.insert(0, target)
    return f"cudnn frontend: {os.path.basename(wheels[-1])} installed into {target}"
