"""Training steps a recipe replays, below the search: the students of ``--arch-scaling``
(``students``), compression (``compress``) and the replay of a recipe (``replay``). The
training verbs themselves are ``edgekit.train_api``'s.
"""
