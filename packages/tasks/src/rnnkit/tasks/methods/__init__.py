"""RNN methods beyond plain training: online learning (:mod:`.online`), pruning
(:mod:`.pruning`), training-free architecture scores (:mod:`.nas`) and analysis of trained
dynamics (:mod:`.analysis`: fixed and slow points, recoding). Each has a command:
``rnnkit online``, ``rnnkit prune``, ``rnnkit nas`` and ``rnnkit analyse``."""
