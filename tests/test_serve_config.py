"""The Serve config is Ray Serve's own schema: family builders Ray can call with typed args,
autoscaling and placement options, what the embedded node must have, and how many jobs the
dispatcher keeps in flight."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retouch.serving.deployments import EngineConfig
from retouch.serving.serve_config import (application_names, default_serve_config,
                                          family_deployment, in_flight_capacity,
                                          load_serve_config, replica_bounds, startup_resources)

ROOT = Path(__file__).resolve().parent.parent


def config_file(tmp_path, diffusion: dict, upscaler: dict | None = None, **app_fields) -> Path:
    """A two-family Serve config with the given deployment options."""
    def app(family, cls, options):
        return {"name": f"my-{family}", "route_prefix": None,
                "import_path": f"retouch.serving.deployments:build_{family}_app",
                "args": {"profile": "tiny"}, **app_fields,
                "deployments": [{"name": cls, **options}]}

    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [
        app("diffusion", "DiffusionDeployment", diffusion),
        app("upscaler", "UpscalerDeployment", upscaler or {"num_replicas": 1})]}))
    return path


@pytest.mark.parametrize("family", ["diffusion", "upscaler"])
def test_builders_are_ray_application_builders_with_typed_args(family):
    from pydantic import ValidationError
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.utils import import_attr

    builder = import_attr(f"retouch.serving.deployments:build_{family}_app")
    app = call_user_app_builder_with_args_if_necessary(
        builder, {"profile": "tiny", "device": "cpu", "max_batch_size": "2"})
    assert isinstance(app, Application)
    [engine_config] = app._bound_deployment.init_args
    assert engine_config == EngineConfig(profile="tiny", device="cpu", max_batch_size=2)
    with pytest.raises(ValidationError, match="profil"):
        call_user_app_builder_with_args_if_necessary(builder, {"profil": "tiny"})
    with pytest.raises(ValidationError, match="max_batch_size"):
        call_user_app_builder_with_args_if_necessary(builder, {"max_batch_size": 0})


def test_embedded_default_is_one_cpu_replica_per_family_without_a_proxy():
    config = default_serve_config({"profile": "tiny", "cache_dir": "/models"})
    assert config.proxy_location.value == "Disabled"
    assert application_names(config) == {"diffusion": "retouch-diffusion",
                                         "upscaler": "retouch-upscaler"}
    for family in ("diffusion", "upscaler"):
        options = family_deployment(config, family)
        assert options["num_replicas"] == 1 and options["max_ongoing_requests"] == 4
        assert options["ray_actor_options"] == {"num_cpus": 0, "num_gpus": 0}
    assert [app.args["cache_dir"] for app in config.applications] == ["/models", "/models"]
    assert in_flight_capacity(config) == 8


def test_file_args_win_over_settings_and_are_checked(tmp_path):
    path = config_file(tmp_path, {"num_replicas": 2})
    config = load_serve_config(path, {"profile": "sdxl", "device": "cuda", "cache_dir": "/m"})
    assert [app.args["profile"] for app in config.applications] == ["tiny", "tiny"]
    assert config.applications[0].args["device"] == "cuda"  # filled from the settings
    assert application_names(config) == {"diffusion": "my-diffusion", "upscaler": "my-upscaler"}

    raw = yaml.safe_load(path.read_text())
    raw["applications"][0]["args"]["max_batch_size"] = -1
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError,
                       match=r"(?s)applications\[my-diffusion\]\.args.*max_batch_size"):
        load_serve_config(path)
    raw["applications"][0]["args"]["max_batch_size"] = 1
    raw["applications"][0]["deployments"][0]["name"] = "Diffusion"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="no deployment named Diffusion"):
        load_serve_config(path)


def test_autoscaling_allows_zero_replicas_and_sets_the_in_flight_capacity(tmp_path):
    scaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
               "upscale_delay_s": 5, "downscale_delay_s": 60}
    path = config_file(tmp_path, {"autoscaling_config": scaling, "max_ongoing_requests": 3},
                       {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2},
                        "max_ongoing_requests": 2})
    config = load_serve_config(path)
    assert replica_bounds(family_deployment(config, "diffusion")) == (1, 4)
    assert replica_bounds(family_deployment(config, "upscaler")) == (0, 2)
    assert in_flight_capacity(config) == 4 * 3 + 2 * 2
    auto = load_serve_config(config_file(tmp_path, {"num_replicas": "auto"}))
    assert replica_bounds(family_deployment(auto, "diffusion")) == (1, 100)  # Serve's default

    bad = config_file(tmp_path, {"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ValueError, match="(?s)autoscaling_config.*max_replicas"):
        load_serve_config(bad)
    typo = config_file(tmp_path, {"autoscaling_config": {"max_replica": 2}})
    with pytest.raises(ValueError, match=r"autoscaling_config\.max_replica\b"):
        load_serve_config(typo)


def test_fractional_gpus_and_accelerator_types_are_placed_or_refused(tmp_path, monkeypatch):
    import ray

    from retouch.serving.runtime import check_local_resources

    path = config_file(
        tmp_path,
        {"num_replicas": 1, "ray_actor_options": {"num_gpus": 1, "accelerator_type": "H100"}},
        {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1, "num_gpus": 0.5}})
    config = load_serve_config(path)
    # Serve's own default of one CPU applies where ray_actor_options leave num_cpus out.
    assert startup_resources(config) == {"CPU": 3, "GPU": 2, "accelerator_type:H100": 0.001}

    monkeypatch.setattr(ray, "cluster_resources",
                        lambda: {"CPU": 16, "GPU": 2, "accelerator_type:H100": 1})
    check_local_resources(config)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16, "GPU": 2,
                                                          "accelerator_type:A10G": 1})
    with pytest.raises(RuntimeError, match="needs a H100 GPU for its replicas"):
        check_local_resources(config)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16, "GPU": 1,
                                                          "accelerator_type:H100": 1})
    with pytest.raises(RuntimeError, match="needs 2 GPUs for its replicas; this node has 1"):
        check_local_resources(config)


def test_the_cuda_images_default_command_starts_on_one_gpu_node(monkeypatch):
    import re

    import ray

    from retouch.serving.runtime import check_local_resources

    dockerfile = (ROOT / "Dockerfile.cuda").read_text()
    path = re.search(r"RETOUCH_SERVE_CONFIG=/app/(\S+)", dockerfile).group(1)
    config = load_serve_config(ROOT / path)
    assert startup_resources(config)["GPU"] == pytest.approx(1.0)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8, "GPU": 1})
    check_local_resources(config)  # a single-GPU node with 8 cores places every replica


def test_the_checked_in_cluster_config_autoscales_every_family():
    cluster = load_serve_config(ROOT / "deploy" / "kuberay" / "serve_config.yaml")
    for family in ("diffusion", "upscaler"):
        options = family_deployment(cluster, family)
        assert "autoscaling_config" in options and options["ray_actor_options"]["num_gpus"] > 0
    assert replica_bounds(family_deployment(cluster, "upscaler"))[0] == 0  # scales to zero
    assert in_flight_capacity(cluster) == 8 * 8 + 4 * 4


def test_the_dispatcher_keeps_the_replicas_capacity_in_flight(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from retouch.serving import dispatcher, runtime
    from retouch.serving.settings import Settings

    made = []
    monkeypatch.setattr(runtime, "start_backend",
                        lambda *a, **k: runtime.Backend(object(), in_flight_capacity=12))
    monkeypatch.setattr(dispatcher, "make_dispatcher", lambda services, backend, config:
                        made.append(config) or SimpleNamespace(start=lambda: None))
    monkeypatch.delenv("RETOUCH_DISPATCHER_CONCURRENCY", raising=False)
    for settings, expected in ((Settings(home=tmp_path), 12),
                               (Settings(home=tmp_path, dispatcher_concurrency=2), 2)):
        runtime.RayExecutor(SimpleNamespace(settings=settings, metrics=None)).start()
        assert made.pop().concurrency == expected  # an explicit setting is kept


def test_serve_build_describes_both_families_in_a_config_retouch_loads(tmp_path):
    import subprocess
    import sys

    built = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "build", "-o", str(tmp_path / "built.yaml"),
         "retouch.serving.serve_apps:diffusion", "retouch.serving.serve_apps:upscaler"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    raw = yaml.safe_load((tmp_path / "built.yaml").read_text())
    assert [[d["name"] for d in app["deployments"]] for app in raw["applications"]] == [
        ["DiffusionDeployment"], ["UpscalerDeployment"]]
    for app, family in zip(raw["applications"], ("diffusion", "upscaler")):
        app["import_path"] = f"retouch.serving.deployments:build_{family}_app"
        app["args"] = {"profile": "tiny"}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(raw))
    config = load_serve_config(tmp_path / "serve.yaml")
    assert application_names(config) == {"diffusion": "app1", "upscaler": "app2"}
