"""The search for the best recipe of a model on a device, and the cheaper advice.

One job per module, imported in this order (each only from the ones above it):

- ``space``: what is searched (``SearchSpace``) and the recipe a trial's parameters stand for.
- ``settings``: the study's settings (``study.json``), constraints, objectives, file names.
- ``build``: the content-addressed build cache the trials share.
- ``advice_text``: the plain-language lines, from measured rows.
- ``advisor``: ``advise()``, the cheap recipes built and measured once each.
- ``pruner``: stops hopeless fine-tunes (Optuna's pruner on a companion study).
- ``prepare``: the students and cost estimates made before a search that trains.
- ``runner``: one trial (build, gate, measure, record).
- ``finalists``: the finalists re-measured side by side.
- ``study``: trials as rows, the Pareto front, the choice.
- ``html``: ``report.html``.
- ``report``: the explanation, ``best.recipe.json`` and the report of a finished search.
- ``loop``: ``optimize()`` and ``resume()``.

The public verbs are ``edgekit.optimize`` and ``edgekit.advise``; this package imports nothing
on its own so that ``import edgekit`` stays cheap.
"""
