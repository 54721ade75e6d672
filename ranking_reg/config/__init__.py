"""The run config's schema (:mod:`ranking_reg.config.schema`); the entry point that checks a
composed config is :func:`ranking_reg.utils.config_checks.validate_config`."""
