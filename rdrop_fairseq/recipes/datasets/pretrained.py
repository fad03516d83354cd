"""The pre-trained fairseq checkpoints the GLUE and CNN/DM recipes fine-tune:
``roberta.large`` and ``bart.large`` from fairseq's model zoo, fetched and unpacked
like the corpora (``--archive``, ``--mirror``, cache, URL) into ``OUT/<model>/``.

    python -m rdrop_fairseq.recipes.datasets.pretrained roberta.large --out models [--archive roberta.large.tar.gz]

Prints the path of ``model.pt``.  fairseq publishes no hash for these tarballs: they
are checked by reading them to the end, or against ``--hash NAME=sha256:...``.
"""
from pathlib import Path

from ..download import Archive
from .common import Layout, build_parser, fetch_and_extract, run

MODELS = {name: Archive(f"{name}.tar.gz", (f"https://dl.fbaipublicfiles.com/fairseq/models/{name}.tar.gz",))
          for name in ("roberta.large", "bart.large")}


def model_path(out: Path, model: str) -> Path:
    """Where :func:`fetch_model` puts ``model.pt``: known before anything is fetched."""
    return Layout(Path(out), model).orig_dir / MODELS[model].name.split(".")[0] / "model.pt"


def fetch_model(args) -> Path:
    if args.path_only:
        return model_path(args.out, args.model)
    archive = MODELS[args.model]
    folder = fetch_and_extract(Layout(args.out, args.model), args, [archive],
                               {archive.name: [f"{args.model}/model.pt", f"{args.model}/dict.txt"]})[archive.name]
    return folder / "model.pt"


def parser():
    parser = build_parser("python -m rdrop_fairseq.recipes.datasets.pretrained", __doc__, list(MODELS.values()))
    parser.set_defaults(out=Path("models"))
    parser.add_argument("model", choices=sorted(MODELS), help="the pre-trained model to fetch")
    parser.add_argument("--path-only", action="store_true",
                        help="print where model.pt is put, fetching nothing (the train scripts' --print-args)")
    for action in parser._actions:  # the corpus parser's texts that say otherwise here
        if action.dest == "out":
            action.help = "the models folder: model.pt goes to OUT/<model>/orig/... (default: ./models)"
        elif action.dest == "workers":
            action.help = "unused here"
        elif action.dest == "hash":
            action.help = ("expected hash of a tarball, e.g. roberta.large.tar.gz=sha256:..., or NAME=none "
                           "(fairseq publishes none)")
    return parser


def main(argv=None):
    run(parser(), fetch_model, argv)


if __name__ == "__main__":
    main()
