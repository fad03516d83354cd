"""The pre-trained fairseq checkpoints the GLUE and CNN/DM recipes fine-tune:
``roberta.large`` and ``bart.large`` from fairseq's model zoo, fetched and unpacked
like the corpora (``--archive``, ``--mirror``, cache, URL) into ``OUT/<model>/``.

    python -m rdrop_fairseq.datasets.pretrained roberta.large --out models [--archive roberta.large.tar.gz]

Prints the path of ``model.pt``.  fairseq publishes no hash for these tarballs: they
are checked by reading them to the end, or against ``--hash NAME=sha256:...``.
"""
from pathlib import Path

from ..download import Archive
from .common import Layout, build_parser, fetch_and_extract, run

MODELS = {name: Archive(f"{name}.tar.gz", (f"https://dl.fbaipublicfiles.com/fairseq/models/{name}.tar.gz",))
          for name in ("roberta.large", "bart.large")}


def fetch_model(args) -> Path:
    archive = MODELS[args.model]
    layout = Layout(args.out, args.model)
    folder = fetch_and_extract(layout, args, [archive],
                               {archive.name: [f"{args.model}/model.pt", f"{args.model}/dict.txt"]})[archive.name]
    return folder / "model.pt"


def parser():
    parser = build_parser("python -m rdrop_fairseq.datasets.pretrained", __doc__, list(MODELS.values()))
    parser.set_defaults(out=Path("models"))
    parser.add_argument("model", choices=sorted(MODELS), help="the pre-trained model to fetch")
    return parser


def main(argv=None):
    run(parser(), fetch_model, argv)


if __name__ == "__main__":
    main()
