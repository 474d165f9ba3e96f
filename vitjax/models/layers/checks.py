"""Construction-time checks shared by the multi-stage (hierarchical) models."""

from vitjax.errors import UserError


def check_stage_fields(family: str, module, fields):
  """Each per-stage field has one entry per stage (len(depths)), and every
  stage width divides by its number of heads; else a UserError naming them."""
  depths = tuple(module.depths)
  n = len(depths)
  for field in fields:
    value = tuple(getattr(module, field))
    if len(value) != n:
      raise UserError(f"{family}: {field}={value} must have one "
                      f"entry per stage ({n}, as depths={depths}).")
  for i, (d, hd) in enumerate(zip(module.embed_dims, module.num_heads)):
    if d % hd:
      raise UserError(f"{family} stage {i}: width {d} is not divisible by num_heads={hd}.")
