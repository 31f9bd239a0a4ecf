"""What weights exist and how to load them.

- `registry`: `ModelSpec`, the `tiny` and `sdxl` profiles, `resolve_profile(name, overrides)`.
- `tiny`: `build_tiny_models(cache_dir)`, the deterministic builder of the CPU twins.
- `store`: `ModelStore`, lazy cached accessors for every pipeline and helper model.
- `fetch`: `fetch_models(profile, cache_dir)`, pre-download of a production profile.
- `realesrgan_arch`: torch-only `RRDBNet` / `SRVGGNetCompact` with the official parameter names.

Submodules import torch/diffusers/transformers; this package itself imports nothing.
"""
