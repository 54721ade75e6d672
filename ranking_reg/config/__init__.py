"""The run config's schema (:mod:`ranking_reg.config.schema`, written in the vocabulary of
:mod:`ranking_reg.config.rules`) and its ``_target_`` check (:mod:`ranking_reg.config.targets`).
The entry point that checks a composed config is
:func:`ranking_reg.utils.config_checks.validate_config`."""
