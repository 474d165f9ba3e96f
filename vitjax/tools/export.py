"""Writes a vitjax run as a Hugging Face snapshot that `from_pretrained` loads.

  python -m vitjax.tools.export --workdir=/tmp/ft --out=/tmp/ft_hf [--step=N] [--no-ema]

The run's latest checkpoint (EMA weights when kept) becomes `config.json` +
`model.safetensors` (+ the image processor's config and the class names) in
--out, for the families with an exporter (`vitjax.convert.list_exporters()`);
see `vitjax.convert.export_hf`.
"""

import argparse
import sys

from vitjax.errors import UserError


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="the vitjax run to export")
  parser.add_argument("--out", required=True, help="the snapshot folder to write")
  parser.add_argument("--step", type=int, default=None, help="a checkpoint step (latest)")
  parser.add_argument("--no-ema", dest="ema", action="store_false", default=None,
                      help="export the raw parameters, not their EMA")
  parser.add_argument("--image_size", type=int, default=None,
                      help="recorded in config.json (default: the run's)")
  args = parser.parse_args(argv)
  from vitjax.convert import export_hf  # pylint: disable=g-import-not-at-top
  try:
    out = export_hf(args.workdir, args.out, image_size=args.image_size, step=args.step,
                    ema=args.ema)
  except UserError as e:
    sys.stderr.write(f"vitjax error: {e}\n")
    sys.exit(2)
  print(out)


if __name__ == "__main__":
  main()
