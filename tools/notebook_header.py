"""Give every notebook twin its Colab badge and setup cell (idempotent).

    python tools/notebook_header.py          # rewrite notebooks/NN_*.py in place

The badge goes on the first line of the title cell; the setup cell is the first code cell. Both
come from ``mrcnn_jax.colab`` (repository, revision), so a new release tag or another GitHub
home is one edit there and one run of this script. ``tests/test_colab.py`` checks the result.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mrcnn_jax import colab  # noqa: E402

SETUP_CELL = f'''# %%
# Colab setup: on Colab, fetch this project at the notebooks' revision and install what the
# runtime lacks (the logic is mrcnn_jax/colab.py); anywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import importlib.util
    import os
    import subprocess

    REPO = "{colab.CLONE_DIR}"
    if not os.path.isdir(REPO):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", "{colab.REVISION}",
                        "https://github.com/{colab.REPOSITORY}", REPO], check=True)
    spec = importlib.util.spec_from_file_location("colab_setup", f"{{REPO}}/mrcnn_jax/colab.py")
    colab_setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_setup)
    colab_setup.setup(REPO)  # installs, moves into notebooks/, prints jax.devices()

'''
BADGE_LINE = re.compile(r"^# \[!\[Open In Colab\].*\n#\n", re.MULTILINE)
SETUP_BLOCK = re.compile(r"# %%\n# Colab setup:.*?\n\n(?=# %%)", re.DOTALL)


def add_header(text, stem):
    """``text`` of a jupytext twin with the badge and the setup cell, replacing older ones."""
    text = SETUP_BLOCK.sub("", BADGE_LINE.sub("", text))
    title = text.index("# %% [markdown]\n") + len("# %% [markdown]\n")
    text = text[:title] + f"# {colab.badge(stem)}\n#\n" + text[title:]
    first_code = re.search(r"^# %%\n", text, re.MULTILINE).start()
    return text[:first_code] + SETUP_CELL + text[first_code:]


def main():
    for twin in sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.py")):
        twin.write_text(add_header(twin.read_text(), twin.stem))
        print("header:", twin.name)


if __name__ == "__main__":
    main()
