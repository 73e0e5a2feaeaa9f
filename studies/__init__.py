"""Studies: what *uses* models to learn about them.

Cross-validation (:mod:`adex.studies.cv`) on the published and grouped splits
(:mod:`adex.studies.splits`), the descriptor baseline (:mod:`adex.studies.baseline`: its
feature table in ``baseline_features``, its regressor in ``baseline_model``), experiments
(:mod:`adex.studies.experiments`), reports (:mod:`adex.studies.report`) and
hyperparameter search (:mod:`adex.studies.search`: ``search_space``, ``search_samplers``,
``search_objectives``, ``search_storage``, ``search_report``, ``search_extras``). Studies import the expert and the
advisors, never the other way round. Importing this package does no work.
"""
