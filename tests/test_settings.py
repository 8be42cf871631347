"""engines.settings: every path has a default inside the checkout and honours its environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines import settings

REPO = Path(__file__).resolve().parents[1]
# (function, its variable, its default)
PATHS = [
    (settings.repo_root, "PARTCAM_ROOT", REPO),
    (settings.cache_dir, "PARTCAM_CACHE_DIR", REPO / ".cache"),
    (settings.node_modules, "PARTCAM_NODE_MODULES", REPO / "node_modules"),
    (settings.models_dir, "PARTCAM_MODELS_DIR", REPO / "models"),
    (settings.client_dir, "PARTCAM_CLIENT_DIR", REPO / "client_web"),
    (settings.engine_cache_dir, "PARTCAM_ENGINE_DIR", REPO / ".cache" / "engines"),
    (settings.realbench_dir, "PARTCAM_REALBENCH_DIR", REPO / ".cache" / "realbench"),
]
VARIABLES = [variable for _, variable, _ in PATHS]


@pytest.fixture
def clean_env(monkeypatch):
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("function", "variable", "default"), PATHS, ids=VARIABLES)
def test_defaults_point_inside_the_checkout(clean_env, function, variable, default):
    assert function() == default
    clean_env.setenv(variable, "")  # empty counts as unset
    assert function() == default


@pytest.mark.parametrize(("function", "variable", "default"), PATHS, ids=VARIABLES)
def test_each_variable_is_honoured_when_read(clean_env, tmp_path, function, variable, default):
    clean_env.setenv(variable, str(tmp_path / "elsewhere"))
    assert function() == tmp_path / "elsewhere"


def test_derived_paths_follow_the_root_and_the_cache(clean_env, tmp_path):
    clean_env.setenv("PARTCAM_ROOT", str(tmp_path))
    assert settings.cache_dir() == tmp_path / ".cache"
    assert settings.models_dir() == tmp_path / "models"
    assert settings.node_modules() == tmp_path / "node_modules"
    clean_env.setenv("PARTCAM_CACHE_DIR", str(tmp_path / "cache"))
    assert settings.engine_cache_dir() == tmp_path / "cache" / "engines"
    assert settings.realbench_dir() == tmp_path / "cache" / "realbench"
    assert settings.engines_dir() == REPO / "engines"  # the code itself does not move


def test_users_of_the_paths_read_them_when_called(clean_env, tmp_path):
    from engines.pose.movenet import default_source_dir
    from engines.shipped import shipped_checkpoint
    from training.realphoto.reference import model_path

    clean_env.setenv("PARTCAM_MODELS_DIR", str(tmp_path / "models"))
    clean_env.setenv("PARTCAM_CACHE_DIR", str(tmp_path / "cache"))
    clean_env.setenv("PARTCAM_NODE_MODULES", str(tmp_path / "npm"))
    assert shipped_checkpoint("parts") == tmp_path / "models" / "parts.safetensors"
    assert default_source_dir() == tmp_path / "cache" / "human-models"
    assert model_path("lite") == tmp_path / "npm" / "@mediapipe" / "pose" / "pose_landmark_lite.tflite"
