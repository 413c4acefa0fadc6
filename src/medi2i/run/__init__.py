"""A training run on disk: the run directory's layout, the logged names, the checkpoint format,
loss-jump checks.

The contract between the code that writes a run (``training``, ``losses``) and the code that
reads one (``inference``, ``evaluation``, the CLI): every path comes from
:class:`~medi2i.run.layout.RunLayout`, every logged scalar's name from
:mod:`medi2i.run.scalars`, every checkpoint goes through :mod:`medi2i.run.checkpoint`, and
:mod:`medi2i.run.stability` judges the logged losses the same way during training and
afterwards. It imports neither side, and nothing of the package but ``utils``. Import the
modules themselves (``medi2i.run.layout`` and ``medi2i.run.scalars`` stay light: they import no
torch).
"""
