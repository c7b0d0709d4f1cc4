"""``robustdistill study``: grids, seeds and searches of ``train`` commands on an Optuna storage, run by workers on
one machine or many (see ``docs/studies.md``)."""
