"""Resident weights of a store with every diffusion pipeline loaded, counted once per tensor.

    python -m retouch.models.footprint --profile tiny
    python -m retouch.models.footprint --profile sdxl-random --device meta --dtype bfloat16

Shared modules (the text encoders, VAE and UNets that `from_pipe` hands to sibling pipelines)
count once: tensors are deduplicated by identity, which also works on `meta`, where nothing is
allocated. The IP-Adapter is counted as the size of its weights (its attention layers hold
exactly those tensors, built once per store).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Iterable

import torch


def unique_tensors(modules: Iterable[Any]) -> dict[int, torch.Tensor]:
    """Every parameter and buffer of `modules` (non-modules are skipped), by identity."""
    tensors: dict[int, torch.Tensor] = {}
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for tensor in [*module.parameters(), *module.buffers()]:
                tensors[id(tensor)] = tensor
    return tensors


def diffusion_footprint(store: Any) -> dict[str, int]:
    """{"parameters", "bytes", "tensors"} of every diffusion pipeline of `store`, the IP-Adapter
    image encoder and the IP-Adapter layers, all loaded."""
    modules = [component for pipe in store.diffusion_pipelines()
               for component in pipe.components.values()]
    modules.append(store.image_encoder()[0])
    tensors = unique_tensors(modules)
    adapter = [t for group in store.ip_adapter_weights().values() for t in group.values()]
    counted = [*tensors.values(), *adapter]
    return {"parameters": sum(t.numel() for t in counted),
            "bytes": sum(t.numel() * t.element_size() for t in counted),
            "tensors": len(counted)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--model-cache", default=None)
    args = parser.parse_args(argv)
    from retouch.models.store import ModelStore

    store = ModelStore(profile=args.profile, device=args.device, dtype=args.dtype,
                       cache_dir=args.model_cache)
    print(json.dumps({"profile": args.profile, "device": args.device,
                      **diffusion_footprint(store)}))


if __name__ == "__main__":
    main()
