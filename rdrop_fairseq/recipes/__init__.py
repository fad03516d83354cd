"""The tooling of the paper's recipes, apart from the plugin: corpus downloads and preparation
(``datasets``, ``download``, ``prepare``, ``lohelp``), scoring (``bleu``, ``rouge``, ``validate_log``),
checkpoint averaging, curves (``plot``) and the quickstart.  ``--user-dir`` imports none of it."""
