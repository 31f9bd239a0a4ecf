"""Both families built with default args, for Ray's `serve build`, which needs applications
rather than builders:

    serve build retouch.serving.serve_apps:diffusion retouch.serving.serve_apps:upscaler

prints a Serve config with every deployment option at its code default. To deploy it, point each
`import_path` at the family's builder (`retouch.serving.deployments:build_diffusion_app`, ...)
and give it `args`, as serving/serve_config.yaml does.
"""

from __future__ import annotations

from .deployments import build_diffusion_app, build_upscaler_app

diffusion = build_diffusion_app({})
upscaler = build_upscaler_app({})
