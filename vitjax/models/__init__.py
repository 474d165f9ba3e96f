"""The vitjax model zoo: `create_model(name, **overrides)`, `list_models()`.

Every model returns `(logits, out)`. The backbone contract
(vitjax/models/features.py): each backbone declares, from its fields,
`feature_levels()` -> FeatureLevel(name, stride, channels) fine to coarse, and
returns each level as the NHWC map `out[name]` of shape [B, H / stride,
W / stride, channels]. Hierarchical families name them 'stage_0', 'stage_1',
... (stage i: the i-th run of blocks at one resolution, with its own
downsampling, before any final norm); isotropic ones (ViT, DeiT, LV-ViT,
CrossViT) declare one 'feature_map' at stride = patch size. Dense heads ask
for maps with `features.select_features(model, out, levels= | strides=)` and
take any backbone by name plus `backbone_kwargs`. Each model also declares
`layer_groups()` (its block order), from which the optimizer's layer-wise lr
decay and freeze_depth take their layer ids.
"""

from vitjax.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
