"""YAML configuration: `load_config` → frozen, validated `Config`."""

from lorefine_mpi.config.schema import Config, config_to_dict, dump_config, load_config, search_fingerprint

__all__ = ["Config", "config_to_dict", "dump_config", "load_config", "search_fingerprint"]
