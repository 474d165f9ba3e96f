"""Building blocks shared by every model family (written once, reused)."""

from vitjax.models.layers.attention import Attention, dot_product_attention
from vitjax.models.layers.drop_path import DropPath
from vitjax.models.layers.mlp import Mlp
from vitjax.models.layers.patch_embed import PatchEmbed
from vitjax.models.layers.pos_embed import (
    resample_posemb, sincos_posemb_2d)

__all__ = [
    "Attention", "DropPath", "Mlp", "PatchEmbed", "dot_product_attention",
    "resample_posemb", "sincos_posemb_2d",
]
