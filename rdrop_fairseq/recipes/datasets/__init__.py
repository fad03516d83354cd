"""Preparation of the paper's corpora, one module per corpus, each runnable with
``python -m`` (the ``scripts/prepare-*.sh`` wrappers call them):

- ``iwslt14``: IWSLT14 de-en, fairseq's recipe (``data/data-bin/iwslt14.de-en``);
- ``wmt14``: WMT14 en-de (``data/data-bin/wmt14.en-de``);
- ``wikitext103``: WikiText-103 (``data/data-bin/wikitext-103``).

Text goes to ``OUT/<name>/`` and binarised data to ``OUT/data-bin/<name>/``.
"""
