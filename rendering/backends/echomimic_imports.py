"""Which Python modules EchoMimic's code imports, read from the clone itself (never executed).

The backend imports five upstream modules; each pulls in more of the clone and some
third-party packages (`ffmpeg-python` through its Whisper copy, for one). Walking the import
statements of the files actually cloned tells `check_renderer` every package that is missing,
by its pip name, before a worker tries to load 12 GB of weights and fails on the first one.
Only imports that always run count: those inside functions, `if` or `try` blocks are optional
(xformers, accelerate) or happen only on paths the backend does not take.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

# what the backend imports from the clone (rendering/backends/echomimic.py, _load)
ENTRY_MODULES = [
    "src.models.face_locator",
    "src.models.unet_2d_condition",
    "src.models.unet_3d_echo",
    "src.models.whisper.audio2feature",
    "src.pipelines.pipeline_echo_mimic_acc",
]
# what the backend itself imports besides the clone
BACKEND_MODULES = ["diffusers", "yaml"]
# the pip requirement for a module whose name differs, or whose version matters
REQUIREMENT = {
    "ffmpeg": "ffmpeg-python",
    "diffusers": "diffusers==0.24.0",
    "huggingface_hub": "huggingface_hub<0.26",
    "cv2": "opencv-python",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
}


def _file_of(install: Path, dotted: str) -> Path | None:
    base = install.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _unconditional_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements at module level or in a class body, outside if/try/with blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.ClassDef):
            pending.extend(node.body)
    return found


def third_party_modules(install: Path) -> set[str]:
    """Top-level names of the non-standard-library modules the entry modules import."""
    outside: set[str] = set()
    seen: set[Path] = set()
    queue = list(ENTRY_MODULES)
    while queue:
        dotted = queue.pop()
        parts = dotted.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for depth in range(1, len(parts) + 1):
            path = _file_of(install, ".".join(parts[:depth]))
            if path is None or path in seen:
                continue
            seen.add(path)
            package = (
                ".".join(parts[:depth])
                if path.name == "__init__.py"
                else ".".join(parts[: depth - 1])
            )
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            except (OSError, SyntaxError, ValueError):
                continue  # an unreadable file fails loudly at import; nothing to name here
            for node in _unconditional_imports(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif node.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                    names = [base] + [f"{base}.{alias.name}" for alias in node.names]
                else:
                    base = node.module or ""
                    names = [base] + [f"{base}.{alias.name}" for alias in node.names]
                for name in names:
                    top = name.split(".")[0]
                    if top == "src":
                        if _file_of(install, name) is not None:
                            queue.append(name)
                    elif top and top not in sys.stdlib_module_names and not name.startswith("."):
                        outside.add(top)
    return outside


def missing_requirements(install: Path | None) -> list[str]:
    """Pip requirements for every module the backend and the clone need but this Python lacks."""
    modules = set(BACKEND_MODULES)
    if install is not None:
        modules |= third_party_modules(install)
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    return [
        REQUIREMENT[m] + (f" (module {m})" if re.split("[=<>]", REQUIREMENT[m])[0] != m else "")
        if m in REQUIREMENT
        else m
        for m in missing
    ]
