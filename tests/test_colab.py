"""The Colab setup decides what to install from the runtime it sees; every notebook opens with
the badge and the setup cell."""

import pathlib
import sys
import tomllib

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mrcnn_jax import colab

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
DEPENDENCIES = colab.requirements(ROOT)
PY = "/usr/bin/python3"
UP_TO_DATE = {"jax": "0.10.2", "jaxlib": "0.10.2", "flax": "0.12.8", "optax": "0.2.8",
              "numpy": "2.4.1", "tensorflow_datasets": "4.9.10", "importlib-resources": "6.5",
              "grain": "0.2.18", "array_record": "0.8.6", "pycocotools": "2.0.11",
              "matplotlib": "3.11.0", "Pillow": "11.3", "tqdm": "4.67",
              "orbax-checkpoint": "0.12.8", "mrcnn_jax": "0.2.0"}
COLAB_TODAY = {**UP_TO_DATE, "jax": "0.7.2", "jaxlib": "0.7.2", "flax": "0.10.7",
               "orbax-checkpoint": "0.11.2", "numpy": "2.0.2", "tensorflow_datasets": None,
               "grain": None, "array_record": None, "mrcnn_jax": None}


JAX_SPEC = Requirement(next(d for d in DEPENDENCIES if d.startswith("jax"))).specifier
COLAB_TODAY_BY_NAME = {canonicalize_name(k): v for k, v in COLAB_TODAY.items()}


def _plan(accelerator, installed, imported=()):
    return colab.plan_install(accelerator, installed, set(imported), DEPENDENCIES, "/content/p",
                              python=PY)


def test_requirements_read_the_project_and_name_plain_jax():
    names = [d.split(">")[0].split("=")[0].split("[")[0].strip() for d in DEPENDENCIES]
    assert "jax" in names and "flax" in names
    assert not any(d.startswith("jax[") for d in DEPENDENCIES), "the package depends on jax"


@pytest.mark.parametrize("accelerator, extra", [("tpu", "tpu"), ("gpu", "cuda12"), ("cpu", "cpu")])
def test_old_colab_image_gets_the_matching_jax_first_then_the_project(accelerator, extra):
    installed = {**COLAB_TODAY, "libtpu": "0.0.17", "jax-cuda12-plugin": "0.7.2"}
    plan = _plan(accelerator, installed, imported={"numpy", "jax"})
    spec = Requirement(next(d for d in DEPENDENCIES if d.startswith("jax"))).specifier
    assert [list(c) for c in plan.commands] == [
        [PY, "-m", "pip", "install", "-q", f"jax[{extra}]{spec}"],
        [PY, "-m", "pip", "install", "-q", "-e", "/content/p"],
    ]
    reasons = " ".join(plan.restart)
    assert "jax 0.7.2" in reasons and "numpy 2.0.2" in reasons  # both imported, both replaced
    assert "flax" not in reasons  # replaced but never imported: no restart for it


def test_everything_new_enough_installs_nothing():
    for accelerator, plugin in (("tpu", {"libtpu": "0.0.20"}),
                                ("gpu", {"jax-cuda12-plugin": "0.10.2"}), ("cpu", {})):
        plan = _plan(accelerator, {**UP_TO_DATE, **plugin}, imported={"numpy", "jax"})
        assert plan.commands == () and plan.restart == (), accelerator


def test_jax_new_enough_but_project_missing_installs_only_the_project():
    plan = _plan("cpu", {**UP_TO_DATE, "mrcnn_jax": None, "grain": None}, imported={"numpy"})
    assert [c[-2:] for c in plan.commands] == [["-e", "/content/p"]]
    assert plan.restart == ()  # grain was not installed, so nothing imported is replaced


def test_tpu_without_libtpu_or_gpu_without_plugin_reinstalls_jax():
    assert "jax[tpu]" in _plan("tpu", UP_TO_DATE).commands[0][-1]
    assert "jax[cuda12]" in _plan("gpu", UP_TO_DATE).commands[0][-1]
    # a jaxlib outside the bound is replaced too, with a restart when jax was imported
    plan = _plan("cpu", {**UP_TO_DATE, "jaxlib": "0.9.0"}, imported={"jax", "jaxlib"})
    assert [c[-1] for c in plan.commands] == [f"jax[cpu]{JAX_SPEC}"]
    assert "jaxlib 0.9.0" in " ".join(plan.restart)


def test_bad_accelerator_is_refused():
    with pytest.raises(ValueError, match="accelerator must be one of"):
        _plan("npu", UP_TO_DATE)


def test_detect_accelerator_from_the_environment():
    none = dict(path_exists=lambda path: False, which=lambda name: None)
    assert colab.detect_accelerator({"TPU_ACCELERATOR_TYPE": "v5litepod-1"}, **none) == "tpu"
    assert colab.detect_accelerator({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, **none) == "tpu"
    assert colab.detect_accelerator({}, path_exists=lambda p: p == "/dev/accel0",
                                    which=lambda n: None) == "tpu"
    assert colab.detect_accelerator({"COLAB_GPU": "1"}, **none) == "gpu"
    assert colab.detect_accelerator({}, path_exists=lambda p: False,
                                    which=lambda n: "/usr/bin/nvidia-smi") == "gpu"
    assert colab.detect_accelerator({"COLAB_GPU": "0"}, **none) == "cpu"


def test_setup_outside_colab_does_nothing(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.chdir(tmp_path)
    calls = []
    assert colab.setup(ROOT, run=lambda *a, **k: calls.append(a)) is None
    assert calls == [] and pathlib.Path.cwd() == tmp_path


def test_setup_on_simulated_colab_runs_the_plan_and_moves_into_notebooks(monkeypatch, tmp_path):
    project = tmp_path / "clone"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    monkeypatch.setattr(colab, "detect_accelerator", lambda: "tpu")
    monkeypatch.setattr(colab, "installed_versions",
                        lambda names: {name: COLAB_TODAY_BY_NAME.get(canonicalize_name(name))
                                       for name in names})
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    calls = []
    plan = colab.setup(project, run=lambda command, check: calls.append(command))
    assert [c[-1] for c in calls] == [plan.commands[0][-1], str(project)]
    assert calls[0][-1].startswith("jax[tpu]")
    assert pathlib.Path.cwd() == project / "notebooks"
    assert plan.restart  # numpy is imported in this process and gets replaced


def test_revision_is_the_project_version_tag():
    with open(ROOT / "pyproject.toml", "rb") as file:
        version = tomllib.load(file)["project"]["version"]
    assert colab.REVISION == f"v{version}"


def test_badge_points_at_the_notebook_on_colab():
    link = colab.badge("03_nms")
    assert link.startswith("[![Open In Colab](https://colab.research.google.com/assets/")
    assert link.endswith(f"github/{colab.REPOSITORY}/blob/{colab.REVISION}/notebooks/03_nms.ipynb)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_badge_and_setup_cell(path):
    cells = nbformat.read(path, 4).cells
    assert cells[0].cell_type == "markdown" and colab.badge(path.stem) in cells[0].source, (
        f"{path.name}: the first cell must hold {colab.badge(path.stem)}")
    first_code = next(c for c in cells if c.cell_type == "code")
    for needle in ('if "google.colab" in sys.modules:', f'"{colab.REVISION}"',
                   f"https://github.com/{colab.REPOSITORY}", ".setup(REPO)"):
        assert needle in first_code.source, f"{path.name}: setup cell lacks {needle!r}"


def test_data_goes_to_the_checkout_or_a_user_cache_never_site_packages(monkeypatch, tmp_path):
    from mrcnn_jax.data import examples

    monkeypatch.setenv("MRCNN_JAX_DATA", str(tmp_path / "mine"))
    assert examples.default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("MRCNN_JAX_DATA")
    monkeypatch.setattr(examples, "_REPO", ROOT)  # a source checkout (Colab's clone too)
    assert examples.default_data_dir() == ROOT / "data"
    monkeypatch.setattr(examples, "_REPO", tmp_path / "lib" / "python3.13")  # an installed copy
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert examples.default_data_dir() == tmp_path / "home" / ".cache" / "mrcnn_jax" / "data"
