"""The Serve config: Ray Serve's own multi-application schema, one application per model family.

A config file is what `serve deploy` / `serve run CONFIG` and a KubeRay RayService's
`serveConfigV2` take (`ray.serve.schema.ServeDeploySchema`, documented by Ray):

    applications:
      - name: retouch-diffusion
        route_prefix: null            # reached through Serve handles, not over HTTP
        import_path: retouch.serving.deployments:build_diffusion_app
        args: {profile: sdxl, device: cuda, dtype: float16, max_batch_size: 4}
        deployments:
          - name: DiffusionDeployment
            autoscaling_config: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2}
            ray_actor_options: {num_gpus: 1, accelerator_type: H100}

A family is recognised by its builder's `import_path`; the dispatcher finds its application by
that application's `name` (`serve.get_app_handle`). Applications with other import paths are left
alone. Without a file, `default_serve_config` gives every family one CPU replica.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .deployments import (DEPLOYMENT_DEFAULTS, EngineConfig, builder_import_path,
                          deployment_name)

SERVE_REPLICA_DEFAULT_CPUS = 1.0  # Serve's own num_cpus when `ray_actor_options` omits it


def families() -> list[str]:
    from .tasks import TASKS

    return list(TASKS.families())


def default_serve_config(args: dict[str, Any] | None = None):
    """The embedded default: one CPU replica per family, no Serve HTTP proxy."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate({
        "proxy_location": "Disabled",
        "applications": [
            {"name": f"retouch-{family}", "route_prefix": None,
             "import_path": builder_import_path(family), "args": dict(args or {}),
             "deployments": [{"name": deployment_name(family), "num_replicas": 1}]}
            for family in families()],
    })


def load_serve_config(path: Path | None, default_args: dict[str, Any] | None = None):
    """The Serve config at `path` (validated by Ray's schema and checked here), or the embedded
    default. `default_args` fill the builder args an application leaves out (the file wins)."""
    if path is None:
        return default_serve_config(default_args)
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(path).read_text()) or {}
    try:
        config = ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"serve config {path}: not a valid Ray Serve config:\n{exc}") from None
    unknown = unknown_options(raw)
    if unknown:
        raise ValueError(f"serve config {path}: unknown option(s) {', '.join(unknown)}")
    return checked_serve_config(config, default_args, source=str(path))


def unknown_options(raw: dict[str, Any]) -> list[str]:
    """Option names in retouch's applications that Ray's schema does not know. Ray accepts
    unknown fields (forward compatibility) and drops them, so a typo such as `gpus:` would
    silently give a CPU replica; retouch refuses them instead."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeApplicationSchema

    ours = {builder_import_path(family) for family in families()}
    found = []

    def check(values: Any, model, where: str) -> None:
        if isinstance(values, dict):
            fields = set(model.model_fields) | {f.alias for f in model.model_fields.values()
                                                if f.alias}
            found.extend(f"{where}.{key}" for key in values if key not in fields)

    for app in raw.get("applications") or []:
        if not isinstance(app, dict) or app.get("import_path") not in ours:
            continue
        where = f"applications[{app.get('name')}]"
        check(app, ServeApplicationSchema, where)
        for deployment in app.get("deployments") or []:
            at = f"{where}.deployments[{deployment.get('name')}]"
            check(deployment, DeploymentSchema, at)
            check(deployment.get("ray_actor_options"), RayActorOptionsSchema,
                  f"{at}.ray_actor_options")
            check(deployment.get("autoscaling_config"), AutoscalingConfig,
                  f"{at}.autoscaling_config")
    return found


def checked_serve_config(config, default_args: dict[str, Any] | None = None, *,
                         source: str = "serve config"):
    """Check that every family has exactly one application whose args and deployment names
    retouch understands; returns the config with `default_args` merged under each family's."""
    from pydantic import ValidationError

    by_family = _applications_by_family(config)
    for family in families():
        apps = by_family.get(family, [])
        if len(apps) != 1:
            raise ValueError(f"{source}: expected one application with import_path "
                             f"{builder_import_path(family)!r} ({family} family), "
                             f"found {len(apps)}")
        app = apps[0]
        try:
            app.args = EngineConfig.model_validate(
                {**(default_args or {}), **app.args}).model_dump(exclude_none=True)
        except ValidationError as exc:
            raise ValueError(f"{source}: applications[{app.name}].args: {exc}") from None
        unknown = {d.name for d in app.deployments} - {deployment_name(family)}
        if unknown:
            raise ValueError(f"{source}: applications[{app.name}] has no deployment named "
                             f"{', '.join(sorted(unknown))}; its deployment is "
                             f"{deployment_name(family)!r}")
        try:  # Ray checks autoscaling_config only when it deploys
            replica_bounds(family_deployment(config, family))
        except ValidationError as exc:
            raise ValueError(f"{source}: applications[{app.name}] autoscaling_config: "
                             f"{exc}") from None
    return config


def _applications_by_family(config) -> dict[str, list]:
    paths = {builder_import_path(family): family for family in families()}
    by_family: dict[str, list] = {}
    for app in config.applications:
        if app.import_path in paths:
            by_family.setdefault(paths[app.import_path], []).append(app)
    return by_family


def application_names(config) -> dict[str, str]:
    """Family → the name of its Serve application."""
    return {family: apps[0].name for family, apps in _applications_by_family(config).items()}


def family_deployment(config, family: str) -> dict[str, Any]:
    """The Serve options of a family's deployment with the code's defaults filled in."""
    [app] = _applications_by_family(config)[family]
    options: dict[str, Any] = {"num_replicas": 1, **DEPLOYMENT_DEFAULTS}
    for deployment in app.deployments:
        options.update(deployment.model_dump(exclude_unset=True, exclude={"name"}))
    return options


def replica_bounds(options: dict[str, Any]) -> tuple[int, int]:
    """(replicas at start, most replicas) of a deployment's options."""
    autoscaling = options.get("autoscaling_config")
    if options.get("num_replicas") == "auto" or autoscaling:
        from ray.serve.config import AutoscalingConfig

        base = AutoscalingConfig.default().model_dump() if options.get(
            "num_replicas") == "auto" else {}
        scaling = AutoscalingConfig(**{**base, **(autoscaling or {})})
        start = scaling.initial_replicas if scaling.initial_replicas is not None \
            else scaling.min_replicas
        return start, scaling.max_replicas
    return int(options["num_replicas"]), int(options["num_replicas"])


def in_flight_capacity(config) -> int:
    """Jobs all replicas of all families can hold at their largest scale (most replicas ×
    `max_ongoing_requests`): keeping that many in flight lets Serve see load enough to scale up
    every family to its `max_replicas`."""
    total = 0
    for family in families():
        options = family_deployment(config, family)
        total += replica_bounds(options)[1] * int(options["max_ongoing_requests"])
    return total


def startup_resources(config) -> dict[str, float]:
    """Ray resources the replicas need to start: CPU, GPU and `accelerator_type:<T>`; a family
    scaled to zero counts one replica (its first job starts one)."""
    needed: dict[str, float] = {}
    for family in families():
        options = family_deployment(config, family)
        replicas = max(1, replica_bounds(options)[0])
        actor = options.get("ray_actor_options") or {}
        cpus = actor.get("num_cpus")
        per_replica = {"CPU": SERVE_REPLICA_DEFAULT_CPUS if cpus is None else float(cpus),
                       "GPU": float(actor.get("num_gpus") or 0)}
        for resource, amount in (actor.get("resources") or {}).items():
            per_replica[resource] = float(amount)
        if actor.get("accelerator_type"):
            per_replica[f"accelerator_type:{actor['accelerator_type']}"] = 0.001
        for resource, amount in per_replica.items():
            needed[resource] = needed.get(resource, 0.0) + amount * replicas
    return {k: v for k, v in needed.items() if not math.isclose(v, 0.0)}
