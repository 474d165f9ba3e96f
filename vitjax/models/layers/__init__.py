"""Building blocks shared by every model family (written once, reused)."""

from vitjax.models.layers.attention import Attention, dot_product_attention
from vitjax.models.layers.drop_path import DropPath
from vitjax.models.layers.mlp import Mlp
from vitjax.models.layers.patch_embed import PatchEmbed, apply_mask_token
from vitjax.models.layers.pos_embed import (
    resample_posemb, sincos_posemb_2d, sine_posemb_2d)
from vitjax.models.layers.window_attention import (
    ContinuousPositionBias, WindowAttention, WindowAttentionV2,
    log_spaced_coords, relative_position_index,
    resample_relative_position_bias_table, shifted_window_mask,
    window_partition, window_reverse)

__all__ = [
    "Attention", "DropPath", "Mlp", "PatchEmbed", "apply_mask_token", "dot_product_attention",
    "resample_posemb", "sincos_posemb_2d", "sine_posemb_2d",
    "ContinuousPositionBias", "WindowAttention", "WindowAttentionV2",
    "log_spaced_coords", "relative_position_index",
    "resample_relative_position_bias_table", "shifted_window_mask",
    "window_partition", "window_reverse",
]

from vitjax.models.layers.conv import ConvBN, round_channels, same_padding  # noqa: E402

__all__ += ["ConvBN", "round_channels", "same_padding"]

from vitjax.models.layers.cross_attention import ClassTokenCrossAttention  # noqa: E402
from vitjax.models.layers.resize import (  # noqa: E402
    bicubic_resize_matrix, bilinear_resize_matrix, resize_bicubic_torch, resize_bilinear_torch)
from vitjax.models.layers.std_conv import StdConv  # noqa: E402

__all__ += ["ClassTokenCrossAttention", "bicubic_resize_matrix", "bilinear_resize_matrix",
            "resize_bicubic_torch", "resize_bilinear_torch", "StdConv"]

from vitjax.models.layers.focal_attention import (  # noqa: E402
    FocalAttention, cross_relative_position_index, fine_key_indices, pooled_key_indices)

__all__ += ["FocalAttention", "cross_relative_position_index", "fine_key_indices",
            "pooled_key_indices"]

# (The function `neighborhood_attention` stays under its module's name, which it would shadow.)
from vitjax.models.layers.neighborhood_attention import (  # noqa: E402
    NeighborhoodAttention, check_neighborhood, neighborhood_indices)

__all__ += ["NeighborhoodAttention", "check_neighborhood", "neighborhood_indices"]

from vitjax.models.layers.simple_pyramid import (  # noqa: E402
    PyramidBackbone, SimpleFeaturePyramid)

__all__ += ["PyramidBackbone", "SimpleFeaturePyramid"]
