"""Execute the notebooks of ``notebooks/`` (which read their input folder from an environment variable)."""

from __future__ import annotations

import os
from typing import Mapping

__all__ = ["NOTEBOOK_DIR", "notebook_text", "run_notebook"]

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "notebooks")


def run_notebook(name: str, env: Mapping[str, str], timeout: int = 600):
    """Execute ``notebooks/<name>`` in its own folder with `env` set for the kernel (restored afterwards).

    Returns:
      The executed ``nbformat.NotebookNode``, outputs included.
    """
    import nbformat
    from hydra.core.utils import env_override
    from nbclient import NotebookClient

    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    with env_override(dict(env)):
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": NOTEBOOK_DIR}}).execute()
    return nb


def notebook_text(nb) -> str:
    """The text the code cells of an executed notebook printed, concatenated."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
