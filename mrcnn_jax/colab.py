"""Colab setup: what to install so the notebooks run on the runtime at hand, and their badges.

Every notebook opens with an "Open in Colab" badge (:func:`badge`) and a setup cell. Outside
Colab that cell does nothing. On Colab it clones this project at :data:`REVISION` into
``/content/mrcnn_jax`` and runs :func:`setup` from this file, loaded by path: the package itself
cannot be imported yet, so this module uses the standard library only (and ``packaging``, which
every Colab image and pip have).

:func:`plan_install` holds the decision and is a pure function of the runtime (accelerator,
installed versions, already-imported modules), so it is unit-tested without Colab:

- jax: kept when the installed jax, its jaxlib and the accelerator's plugin (``libtpu`` on a
  TPU, ``jax-cuda12-plugin`` on a GPU) satisfy the project's bound; otherwise
  ``jax[tpu]`` / ``jax[cuda12]`` / ``jax[cpu]`` within the bound, installed *before* the project
  so that pip never swaps an accelerator's jax for the CPU one;
- the project and its other dependencies: ``pip install -e`` of the clone when anything is
  missing or outside its bound;
- restart: needed when a package that gets replaced was already imported in this process (Colab
  imports numpy at start-up, for one); :func:`setup` then says so plainly and stops.
"""

import dataclasses
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

REPOSITORY = "mrcnn-jax/mrcnn_jax"  # GitHub owner/name the badges and the setup cell point to
REVISION = "v0.2.0"  # the tag the notebooks of this version install: "v" + pyproject's version
CLONE_DIR = "/content/mrcnn_jax"  # where the setup cell clones the project on Colab
JAX_EXTRA = {"tpu": "tpu", "gpu": "cuda12", "cpu": "cpu"}  # pip extra of jax per accelerator
PLUGIN = {"tpu": "libtpu", "gpu": "jax-cuda12-plugin", "cpu": None}  # what the extra adds
MODULE_OF = {"pillow": "PIL", "orbax-checkpoint": "orbax", "importlib-resources":
             "importlib_resources", "tensorflow-datasets": "tensorflow_datasets",
             "array-record": "array_record", "mrcnn-jax": "mrcnn_jax"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`setup` runs: pip command lines, and why a restart is needed (empty: none)."""

    commands: tuple
    restart: tuple


def badge(stem):
    """Markdown of the "Open in Colab" badge of ``notebooks/<stem>.ipynb`` at :data:`REVISION`."""
    url = (f"https://colab.research.google.com/github/{REPOSITORY}/blob/{REVISION}/"
           f"notebooks/{stem}.ipynb")
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def on_colab(modules=None, environ=None):
    """True inside a Colab kernel (its ``google.colab`` module, or Colab's release variable)."""
    modules = sys.modules if modules is None else modules
    environ = os.environ if environ is None else environ
    return "google.colab" in modules or "COLAB_RELEASE_TAG" in environ


def detect_accelerator(environ=None, path_exists=os.path.exists, which=shutil.which):
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: what the runtime offers, read without importing jax."""
    environ = os.environ if environ is None else environ
    tpu_vars = ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "COLAB_TPU_ADDR")
    if any(environ.get(name) for name in tpu_vars) or path_exists("/dev/accel0"):
        return "tpu"
    if environ.get("COLAB_GPU", "0") not in ("", "0") or path_exists("/dev/nvidia0") or which(
            "nvidia-smi"):
        return "gpu"
    return "cpu"


def requirements(project_dir):
    """The ``[project] dependencies`` of ``project_dir/pyproject.toml``, as strings."""
    with open(pathlib.Path(project_dir) / "pyproject.toml", "rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def installed_versions(names):
    """``{name: version or None}`` of the installed distributions."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _canonical(name):
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def _satisfied(requirement, installed):
    version = installed.get(_canonical(requirement.name))
    return version is not None and requirement.specifier.contains(version, prereleases=True)


def plan_install(accelerator, installed, imported, dependencies, project_dir,
                 python=sys.executable):
    """The pip commands that make this runtime fit the project, and the restarts they force.

    Args:
      accelerator: ``"tpu"``, ``"gpu"`` or ``"cpu"`` (:func:`detect_accelerator`).
      installed: ``{distribution name: version or None}``; names in any spelling.
      imported: names of the modules already imported in this process (``sys.modules``).
      dependencies: requirement strings (:func:`requirements`), ``jax`` among them.
      project_dir: the clone to install (editable).
    Returns:
      :class:`Plan`; no commands when everything already fits.
    """
    from packaging.requirements import Requirement

    if accelerator not in JAX_EXTRA:
        raise ValueError(f"accelerator must be one of {sorted(JAX_EXTRA)}; got {accelerator!r}")
    installed = {_canonical(name): version for name, version in installed.items()}
    parsed = [Requirement(d) for d in dependencies]
    jax = next((r for r in parsed if _canonical(r.name) == "jax"), None)
    if jax is None:
        raise ValueError(f"the project's dependencies name no jax: {dependencies}")
    pip = [python, "-m", "pip", "install", "-q"]
    commands, replaced = [], []
    plugin = PLUGIN[accelerator]
    jaxlib = Requirement(f"jaxlib{jax.specifier}")
    jax_fits = (_satisfied(jax, installed) and _satisfied(jaxlib, installed)
                and (plugin is None or installed.get(plugin) is not None))
    if not jax_fits:
        commands.append([*pip, f"jax[{JAX_EXTRA[accelerator]}]{jax.specifier}"])
        replaced += [(name, installed.get(name), str(jax.specifier)) for name in ("jax", "jaxlib")]
    others = [r for r in parsed if r is not jax and not _satisfied(r, installed)]
    if others or installed.get("mrcnn-jax") is None:
        commands.append([*pip, "-e", str(project_dir)])
        replaced += [(_canonical(r.name), installed.get(_canonical(r.name)), str(r.specifier))
                     for r in others]
    restart = tuple(
        f"{name} {version} is imported and gets replaced ({spec or 'any version'})"
        for name, version, spec in replaced
        if version is not None and MODULE_OF.get(name, name.replace("-", "_")) in imported)
    return Plan(tuple(commands), restart)


def setup(project_dir=CLONE_DIR, run=subprocess.run):
    """On Colab: install what the runtime lacks, move into ``notebooks/``, print the devices.

    Returns the :class:`Plan` it carried out (``None`` outside Colab, where it does nothing).
    """
    if not on_colab():
        return None
    accelerator = detect_accelerator()
    dependencies = requirements(project_dir)
    from packaging.requirements import Requirement

    names = [Requirement(d).name for d in dependencies]
    installed = installed_versions([*names, "jaxlib", "libtpu", "jax-cuda12-plugin", "mrcnn-jax"])
    plan = plan_install(accelerator, installed, set(sys.modules), dependencies, project_dir)
    print(f"Colab runtime: {accelerator.upper()}; installed jax {installed.get('jax')}")
    for command in plan.commands:
        print("$", " ".join(command[1:]))
        run(command, check=True)
    os.chdir(pathlib.Path(project_dir) / "notebooks")  # the notebooks' relative paths hold
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))  # importable now, before any restart
    if plan.restart:
        print("RESTART THE RUNTIME NOW (Runtime > Restart session), then run this cell again:")
        for reason in plan.restart:
            print("  -", reason)
        return plan
    import jax

    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    return plan
