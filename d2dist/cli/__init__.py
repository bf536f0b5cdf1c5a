"""d2dist's command-line tools: the console scripts ``pip install`` creates and ``tools/*.py``.

One module per tool, each with ``main`` (what the tests and ``tools/<name>.py`` call, as before)
and ``console_main`` (the console script: parses ``sys.argv``, returns the exit status):

- ``d2dist-train``: ``d2dist.cli.train_net`` (``tools/train_net.py``)
- ``d2dist-train-lazy``: ``d2dist.cli.lazyconfig_train_net`` (``tools/lazyconfig_train_net.py``)
- ``d2dist-export``: ``d2dist.cli.export_student`` (``tools/export_student.py``)
- ``d2dist-benchmark``: ``d2dist.cli.benchmark`` (``tools/benchmark.py``)
- ``d2dist-loss-scale``: ``d2dist.cli.loss_scale`` (``tools/loss_scale.py``)
- ``d2dist-convert-torchvision``: ``d2dist.cli.convert_torchvision_to_d2``
  (``tools/convert_torchvision_to_d2.py``)
- ``d2dist-demo``, ``d2dist-study``, ``d2dist-visualize``: ``d2dist.cli.demo``, ``.study``,
  ``.visualize`` (``tools/demo.py``, ``tools/study.py``)

This is the package's top layer (docs/architecture.md): nothing else in d2dist imports it, except
that ``import d2dist`` hides the ``torch.jit.script`` deprecation its import of Detectron2
raises, through
:func:`d2dist.cli._warnings.ignoring_import_warnings`. A tool's entry point calls
:func:`d2dist.cli._warnings.quiet_third_party_warnings` first. This ``__init__`` imports none of
its modules, so importing one tool does not load the others.
"""
